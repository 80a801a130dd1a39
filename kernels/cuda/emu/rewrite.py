# Rewrites kernel<<<grid, block, shmem, stream>>>(args) into emu_launch(...) for kernels/cuda/emu/run.sh.
import sys, re
src = open(sys.argv[1]).read()
out = []; i = 0
def split_top(s):
    parts, depth, cur = [], 0, ''
    for ch in s:
        if ch in '([{': depth += 1
        if ch in ')]}': depth -= 1
        if ch == ',' and depth == 0: parts.append(cur); cur = ''
        else: cur += ch
    parts.append(cur); return [p.strip() for p in parts]
while True:
    j = src.find('<<<', i)
    if j < 0: out.append(src[i:]); break
    # kernel name: identifier before <<<
    m = re.search(r'([A-Za-z_][A-Za-z_0-9]*)\s*$', src[i:j])
    name_start = i + m.start(1)
    out.append(src[i:name_start])
    name = m.group(1)
    k = src.find('>>>', j)
    cfg = split_top(src[j+3:k])
    p = src.find('(', k)
    depth = 0; q = p
    while True:
        if src[q] == '(': depth += 1
        elif src[q] == ')':
            depth -= 1
            if depth == 0: break
        q += 1
    args = src[p:q+1]
    # the kernel's name travels with the launch: tools/step-cost counts by it
    out.append('emu_launch("%s", dim3(%s), dim3(%s), [=]{ %s%s; })' % (name, cfg[0], cfg[1], name, args))
    i = q + 1
open(sys.argv[2], 'w').write(''.join(out))
