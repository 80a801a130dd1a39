# bash completion for runaway: commands, subcommands and each command's flags,
# asked of runaway itself (runaway help --commands, runaway help --flags CMD),
# so it never drifts from the program. Load it with
#   source tools/cli/runaway.bash
# or install it in /usr/share/bash-completion/completions/runaway.
_runaway()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prog=${COMP_WORDS[0]}
    local i words=() global=0
    # the words after the global options and their values
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
        --state-dir | --daemon-bin | --worker) ((i++)) ;;
        -*) ;;
        *) words+=("${COMP_WORDS[i]}") ;;
        esac
    done
    local commands
    commands=$("$prog" help --commands 2>/dev/null) || return
    if ((${#words[@]} == 0)); then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--state-dir --daemon-bin --worker --help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(printf '%s\n' "$commands" | cut -d' ' -f1 | sort -u)" -- "$cur"))
        fi
        return
    fi
    local cmd=${words[0]}
    # a group (daemon, token): its subcommands second
    local subs
    subs=$(printf '%s\n' "$commands" | awk -v g="$cmd" '$1 == g && NF == 2 { print $2 }')
    if [[ -n $subs ]]; then
        if ((${#words[@]} == 1)); then
            COMPREPLY=($(compgen -W "$subs" -- "$cur"))
            return
        fi
        cmd="$cmd ${words[1]}"
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$("$prog" help --flags $cmd 2>/dev/null)" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -o filenames -F _runaway runaway
