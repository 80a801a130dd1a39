"""Hosts on one machine: network namespaces on a bridge, for tools/multihost
and tools/chaos --hosts (root only).

Host k is the namespace PREFIX-hK with address 10.231.0.(k+1)/24 on its
eth0, a veth whose other end (PREFIXhK, in the root namespace) is a port of
the bridge PREFIXbr. What the tests do to a host's network happens on that
root-side end or inside the namespace:

  link_down / link_up   the host's cable pulled and put back (a partition)
  flap                  pulled and put back a few times in a row
  set_loss              a share of every packet each host receives dropped
                        (nftables: numgen random), both ways of every link
  set_rate              a bandwidth cap on each host's port (tc tbf)
  kill_all              every process in the host's namespace killed, as
                        when a node dies

tc's netem (delay, loss) is what one would reach for, but a kernel built
without sch_netem refuses it ("Specified qdisc kind is unknown"); loss goes
through nftables instead and delay is not modelled (tbf's cap queues). """
import os
import signal
import subprocess
import sys
import time

SUBNET = "10.231.0"


def sh(*argv, check=True):
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), (r.stderr or r.stdout).strip()))
    return r


def unavailable():
    """Why hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool in ("ip", "nft"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin")):
            return "%s is not installed (apt-get install %s)" % (
                tool, "iproute2" if tool == "ip" else "nftables")
    probe = "rwprobe%d" % os.getpid()
    r = sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return "ip netns add: %s" % r.stderr.strip()
    try:
        r = sh("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe", check=False)
        if r.returncode != 0:
            return "nftables in a namespace: %s" % r.stderr.strip()
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


class Hosts:
    def __init__(self, n, prefix="rw"):
        self.n, self.prefix = n, prefix
        self.bridge = prefix + "br"

    def ns(self, k):
        return "%s-h%d" % (self.prefix, k)

    def port(self, k):
        return "%sh%d" % (self.prefix, k)

    def addr(self, k):
        return "%s.%d" % (SUBNET, k + 1)

    def up(self):
        self.down()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for k in range(self.n):
            ns, port = self.ns(k), self.port(k)
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", port, "master", self.bridge)
            sh("ip", "link", "set", port, "up")
            sh("ip", "-n", ns, "addr", "add", self.addr(k) + "/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # the bridge learns every port before the first packet matters
        for k in range(1, self.n):
            self.wait_reach(k, 0)

    def down(self):
        for k in range(self.n):
            self.kill_all(k)
            sh("ip", "link", "del", self.port(k), check=False)
            sh("ip", "netns", "del", self.ns(k), check=False)
        sh("ip", "link", "del", self.bridge, check=False)

    def wait_reach(self, k, to, timeout=10):
        """Until host k reaches host to (a TCP connect to a closed port is
        refused at once once the path works)."""
        t0 = time.time()
        code = ("import socket,sys\ns=socket.socket();s.settimeout(0.5)\n"
                "try:\n s.connect((sys.argv[1],9))\nexcept ConnectionRefusedError:\n sys.exit(0)\n"
                "except OSError:\n sys.exit(1)\n")
        while time.time() - t0 < timeout:
            if self.run(k, [sys.executable, "-c", code, self.addr(to)]).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("host %d does not reach host %d" % (k, to))

    def argv(self, k, argv):
        return ["ip", "netns", "exec", self.ns(k)] + list(argv)

    def run(self, k, argv, **kw):
        return subprocess.run(self.argv(k, argv), capture_output=True, text=True, **kw)

    def spawn(self, k, argv, log_path):
        logf = open(log_path, "a")
        return subprocess.Popen(self.argv(k, argv), stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def link_down(self, k):
        sh("ip", "link", "set", self.port(k), "down")

    def link_up(self, k):
        sh("ip", "link", "set", self.port(k), "up")

    def flap(self, k, times=3, down_s=0.5, up_s=0.5):
        for _ in range(times):
            self.link_down(k)
            time.sleep(down_s)
            self.link_up(k)
            time.sleep(up_s)

    def set_loss(self, percent):
        """percent of the packets each host receives dropped (0: none)."""
        per_mille = int(round(percent * 10))
        for k in range(self.n):
            ns = self.ns(k)
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "rwloss", check=False)
            if per_mille <= 0:
                continue
            sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "rwloss")
            sh("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "rwloss", "in",
               "{ type filter hook input priority 0; }")
            sh("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "rwloss", "in",
               "iifname", "eth0", "numgen", "random", "mod", "1000", "<", str(per_mille), "drop")

    def set_rate(self, mbit):
        for k in range(self.n):
            sh("tc", "qdisc", "del", "dev", self.port(k), "root", check=False)
            if mbit:
                sh("tc", "qdisc", "add", "dev", self.port(k), "root", "tbf", "rate",
                   "%dmbit" % mbit, "burst", "256kb", "latency", "100ms")

    def pids(self, k):
        r = sh("ip", "netns", "pids", self.ns(k), check=False)
        return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []

    def kill_all(self, k):
        for pid in self.pids(k):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(50):
            if not self.pids(k):
                return
            time.sleep(0.1)


PORT = 7070


class Cluster:
    """runawayd on host 0, coordinating only (--cpu-slots 0 --gpus 0) and
    listening on TCP with a token; a CPU worker (serve --tcp --reconnect)
    on each other host; the state folder on this machine's file system,
    which every host sees; the CLI through the daemon's Unix socket."""

    def __init__(self, build, state, hosts, heartbeat_timeout=8, collective_timeout=10):
        self.build, self.state, self.hosts = build, state, hosts
        self.hb_timeout, self.coll_timeout = heartbeat_timeout, collective_timeout
        self.daemon = None
        self.workers = {}
        self.token = os.path.join(state, "token")

    def cli(self, *args, check=True):
        r = subprocess.run([os.path.join(self.build, "tools/runaway"), "--state-dir", self.state,
                            *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise SystemExit("runaway %s failed (%d): %s%s" %
                             (" ".join(args), r.returncode, r.stdout, r.stderr))
        return r

    def start_daemon(self):
        if not os.path.exists(self.token):
            self.cli("token", "new", self.token)
        self.daemon = self.hosts.spawn(0, [
            os.path.join(self.build, "daemon/runawayd"), "--state-dir", self.state,
            "--cpu-slots", "0", "--gpus", "0", "--tcp", "%s:%d" % (self.hosts.addr(0), PORT),
            "--token-file", self.token, "--max-retries", "100", "--heartbeat", "1",
            "--heartbeat-timeout", str(self.hb_timeout), "--shutdown-timeout", "30"],
            self.state + "-daemon.log")
        sock = os.path.join(self.state, "runawayd.sock")
        for _ in range(6000):  # a database another program locks is waited for
            if os.path.exists(sock) and self.cli("daemon", "status", check=False).returncode == 0:
                return
            if self.daemon.poll() is not None:
                raise SystemExit("runawayd exited (%d) at start; see %s-daemon.log"
                                 % (self.daemon.returncode, self.state))
            time.sleep(0.1)
        raise SystemExit("runawayd did not come up")

    def stop_daemon(self, sig=signal.SIGTERM):
        if self.daemon:
            self.daemon.send_signal(sig)
            self.daemon.wait(60)
            self.daemon = None

    def start_worker(self, k):
        self.workers[k] = self.hosts.spawn(k, [
            os.path.join(self.build, "worker/runaway-worker"), "serve",
            "--tcp", "%s:%d" % (self.hosts.addr(0), PORT), "--token-file", self.token,
            "--device", "h%d:cpu0" % k, "--backend", "cpu", "--threads", "1",
            "--heartbeat", "1", "--collective-timeout", str(self.coll_timeout),
            "--reconnect", "600"], "%s-worker-h%d.log" % (self.state, k))

    def worker_alive(self, k):
        w = self.workers.get(k)
        return w is not None and w.poll() is None

    def start(self):
        self.start_daemon()
        for k in range(1, self.hosts.n):
            self.start_worker(k)

    def stop(self):
        self.stop_daemon()
        for k in range(1, self.hosts.n):
            self.hosts.kill_all(k)
            if k in self.workers:
                self.workers[k].wait()
