# Sourced by tools/test and tools/quickstart: installs what runaway needs from
# Debian's packages (as root), only when something is missing, so a second
# run costs a few dpkg queries.
rw_packages="gcc g++ pkg-config meson ninja-build libopenblas-dev libopenblas-openmp-dev libdnnl-dev libyaml-dev
  libjansson-dev zlib1g-dev libpng-dev libjpeg62-turbo-dev libuv1-dev libsqlite3-dev libcriterion-dev
  libgloo-dev gnuplot-nox libprotobuf-c-dev protobuf-c-compiler libisal-dev
  python3-torch python3-torchvision python3-crc32c iproute2 nftables"

rw_install_deps() {
    local missing="" p
    for p in $rw_packages; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "runaway needs these Debian packages:$missing (run as root, or install them)" >&2
        return 1
    fi
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# The CUDA toolkit lives in /usr/local/cuda where present; meson builds the
# CUDA backend when it finds nvcc.
[ -d /usr/local/cuda/bin ] && case ":$PATH:" in *:/usr/local/cuda/bin:*) ;; *) PATH="$PATH:/usr/local/cuda/bin" ;; esac

rw_build() {
    local dir=${1:-build}
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" >/dev/null
    fi
    meson compile -C "$dir" >/dev/null || meson compile -C "$dir"
}
