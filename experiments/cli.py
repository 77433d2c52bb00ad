"""The ``eucalab`` command; every command it has (``eucalab X --help``, ``eucalab bench X
--help``: its options):

    eucalab check [--servers SPEC]    preflight: what this machine can do, what is missing
    eucalab describe [SPEC] [--png F] hosts, networks, addresses, HA pairs (and a diagram)
    eucalab up [SPEC] [--script F] [--ssh-config F]
                                      bring a deployment up, start its services, open the CLI
    eucalab cleanup                   finish runs whose driver was killed
    eucalab run                       the main job: the default failover experiment
    eucalab experiment DEFINITION     a failover experiment definition (YAML), or a safe-floor one
    eucalab report DIR                a run's plots and report, made again from its raw data
    eucalab compare A B               two runs' results side by side
    eucalab services [RUN_DIR] [--enable|--disable|--stop|--start NAME]
                                      every service's state (euca-describe-services), or change one
    eucalab bench bringup             bring-up/teardown time and memory versus plain Mininet
    eucalab bench cloud               CLC and Walrus API latency through their VIPs, beside moto
    eucalab bench cloud-walrus        Walrus beside moto's S3 server on loopback (no root)
    eucalab bench clc-catchup [N ...] a DISABLED CLC N ops behind its peer catching up (no root)
    eucalab bench instances           instance boots with a cold and a warm image cache
    eucalab bench s3cp [--mib 256]    aws s3 cp of a large file through the Walrus VIP, beside moto
    eucalab bench soak                HA pairs under loss, a CPU hog and arbitrators down: false failovers
    eucalab bench sdn                 flow setup, routed against direct throughput, flow-table size
    eucalab bench lifecycle           CLC and CC memory, replicated view, loop stalls after 1k-100k instance lifecycles
    eucalab bench scale [--size CxNxS] xl.yaml with every service and 1,000 instances, beside plain Mininet
    eucalab run                       the main job on the default deployment
    eucalab vm test|run|serve [ARGS]  the kernel lane: a VM with Debian's kernel (OVS kernel
                                      datapath, netem, 802.1Q) runs tests/kernel or a command,
                                      or serves as a second server (docs/cluster.md)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from topologies.spec import SpecError, load_spec

log = logging.getLogger("eucalab")


def _spec(path: str | None):
    try:
        return load_spec(path)
    except SpecError as exc:
        raise SystemExit(f"eucalab: bad spec: {exc}") from None


def cmd_check(args) -> int:
    from .testbed import preflight

    findings = preflight.run_checks()
    if args.servers:
        from .testbed.servers import check_servers

        servers = _spec(args.servers).servers if args.servers.endswith((".yaml", ".yml")) else \
            ["localhost"] + [s for s in args.servers.split(",") if s and s != "localhost"]
        findings += check_servers(servers, ssh_config=args.ssh_config)
    preflight.render(findings)
    return 0 if all(f.ok for f in findings if f.required) else 1


def cmd_describe(args) -> int:
    from topologies.describe import draw_png, print_description
    from topologies.plan import build_plan

    plan = build_plan(_spec(args.spec))
    print_description(plan)
    if args.png:
        path = draw_png(plan, Path(args.png))
        print(f"diagram written to {path}")
    return 0


def cmd_up(args) -> int:
    from mininet.cli import CLI

    from .testbed.deployment import Deployment

    if not args.script and not sys.stdin.isatty():
        raise SystemExit("eucalab up: no terminal for the Mininet CLI; give --script FILE "
                         "(one CLI command per line) to drive the deployment non-interactively")
    spec = _spec(args.spec)
    ssh_config = None
    if args.ssh_config:
        if not Path(args.ssh_config).is_file():
            raise SystemExit(f"eucalab up: --ssh-config {args.ssh_config}: no such file")
        if len(spec.servers) < 2:
            raise SystemExit(f"eucalab up: --ssh-config is for a spec with other servers; "
                             f"{args.spec or 'the default'} runs on this machine alone "
                             "(servers: [localhost, ...], docs/cluster.md)")
        # Recorded for `eucalab cleanup`, which may run from another directory.
        ssh_config = str(Path(args.ssh_config).resolve())
    from mininet.log import setLogLevel

    setLogLevel("info")  # the CLI's command output
    # Mininet prints through its own handler; keep it from printing twice via ours.
    logging.getLogger("mininet").propagate = False
    with Deployment(spec, run_dir=args.run_dir, ssh_config=ssh_config) as dep:
        if not args.no_services:
            dep.start_services()
        _print_summary(dep)
        CLI(dep.net, script=args.script)
    print(f"deployment down; run directory: {dep.run_dir}")
    return 0


def _print_summary(dep) -> None:
    import json

    print(f"run directory: {dep.run_dir}")
    print(f"  up in {dep.timings['up']:.2f} s: {len(dep.plan.hosts)} hosts, "
          f"{len(dep.plan.switches)} switches, {len(dep.plan.links)} links ({dep.network.datapath} datapath)")
    print(f"  endpoints: {json.dumps(dep.plan.endpoints())}")
    print(f"  credentials: {dep.run_dir / 'credentials'}")
    running = sorted({p.label for p in dep.processes.values() if p.alive()})
    print(f"  services running: {', '.join(running) if running else 'none'}")


def cmd_cleanup(args) -> int:
    from .testbed.deployment import cleanup_runs

    if os.geteuid() != 0:
        raise SystemExit("eucalab cleanup: needs root")
    report = cleanup_runs(force=args.force)
    for line in report:
        print(line)
    if not report:
        print("nothing to clean up: no recorded run is left")
    return 0


def cmd_bench(args) -> int:
    return args.bench(args)


def _bench_bringup(args) -> int:
    from .bench.bringup import bench_bringup

    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    return bench_bringup(sizes, repeat=args.repeat, baseline=not args.no_baseline)


def _bench_cloud(args) -> int:
    from .bench.cloud import run

    return run(args.requests)


def _bench_cloud_walrus(args) -> int:
    from .bench.cloud_walrus import report

    return report(args.requests, args.size, args.json)


def _bench_clc_catchup(args) -> int:
    from .bench.clc_catchup import run

    return run(args.ops)


def _bench_instances(args) -> int:
    from .bench.instances import run

    return run(args.boots)


def _bench_lifecycle(args) -> int:
    from .bench.lifecycle import run

    checkpoints = tuple(int(x) for x in args.checkpoints.split(","))
    return run(lifecycles=max(checkpoints), batch=args.batch, retention_s=args.retention_s,
               checkpoints=checkpoints)


def _bench_s3cp(args) -> int:
    from .bench.s3cp import run

    return run(args.mib, args.repeat)


def _bench_scale(args) -> int:
    from .bench.scale import LAUNCH_TIMEOUT_S, XL_SPEC, run

    size = tuple(int(x) for x in args.size.split("x")) if args.size else None
    if size is not None and len(size) != 3:
        raise SystemExit("eucalab bench scale: --size is CLUSTERSxNCSxSLOTS, e.g. 2x4x4")
    return run(args.spec or XL_SPEC, size=size, instances=args.instances, batch=args.batch,
               trials=args.trials, default=not args.no_default, baseline=not args.no_baseline,
               in_flight=args.in_flight,
               launch_timeout=LAUNCH_TIMEOUT_S if args.launch_timeout is None else args.launch_timeout)


def _positive_seconds(text: str) -> float:
    """An option's seconds: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: the seconds must be above 0")
    return value


def _positive_int(text: str) -> int:
    """An option's count: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value


def _interval_list(text: str) -> list[float]:
    """``--intervals``: milliseconds, comma-separated, each above 0."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of milliseconds") from None
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more intervals above 0 ms, e.g. 20,15,10")
    return values


def _bench_sdn(args) -> int:
    from .bench.sdn import run

    return run(setups=args.setups, seconds=args.seconds, rounds=args.rounds)


def _bench_soak(args) -> int:
    from .failover.soak import run

    return run(minutes=args.minutes, interval_ms=args.interval_ms, misses=args.misses, loss_pct=args.loss,
               hog_cores=args.hog_cores, loss_paths=args.loss_paths)


def _add_bench_parsers(bench: argparse.ArgumentParser) -> None:
    """One subcommand per benchmark, each with only its own options."""
    sub = bench.add_subparsers(dest="what", required=True, metavar="BENCHMARK")

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        b = sub.add_parser(name, help=help, description=help)
        b.set_defaults(bench=fn)
        return b

    b = add("bringup", _bench_bringup, "bring-up/teardown time and memory versus plain Mininet (root)")
    b.add_argument("--sizes", default="1x4,2x8,4x16", help="CLUSTERSxNCS list (default 1x4,2x8,4x16)")
    b.add_argument("--repeat", type=int, default=1)
    b.add_argument("--no-baseline", action="store_true", help="skip plain Mininet")

    b = add("cloud", _bench_cloud, "CLC and Walrus API latency through their VIPs, beside moto (root)")
    b.add_argument("--requests", type=int, default=300, help="requests per measurement")

    b = add("cloud-walrus", _bench_cloud_walrus,
            "Walrus beside moto's S3 server on loopback: GetObject latency of one object (no root)")
    b.add_argument("--requests", type=int, default=300, help="GetObject requests per server")
    b.add_argument("--size", type=int, default=64 * 1024, help="object size in bytes")
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the raw latencies here")

    b = add("clc-catchup", _bench_clc_catchup,
            "CLC catch-up: a DISABLED member N ops behind its ENABLED peer, on loopback (no root)")
    b.add_argument("ops", type=int, nargs="*", default=[5000, 50000], help="ops behind (default 5000 50000)")

    b = add("instances", _bench_instances, "instance boots with a cold and a warm image cache (root)")
    b.add_argument("--boots", type=int, default=100, help="boots per cache state")

    b = add("lifecycle", _bench_lifecycle,
            "CLC and CC memory, replicated view, loop stalls after 1k-100k instance lifecycles (no root)")
    b.add_argument("--checkpoints", default="1000,10000,100000",
                   help="instance lifecycles at which the figures are taken (the last is the total)")
    b.add_argument("--batch", type=int, default=64, help="instances per RunInstances")
    b.add_argument("--retention-s", type=float, default=5.0,
                   help="how long terminated instances are kept (components default: 3600)")

    b = add("s3cp", _bench_s3cp, "aws s3 cp of a large file through the Walrus VIP, beside moto (root)")
    b.add_argument("--mib", type=int, default=256, help="size of the file copied (MiB)")
    b.add_argument("--repeat", type=int, default=1)

    b = add("scale", _bench_scale,
            "xl.yaml with every service, 1,000 instances and crash trials per HA component, beside plain Mininet (root)")
    b.add_argument("--spec", default=None, help="the deployment spec (default topologies/specs/xl.yaml)")
    b.add_argument("--size", default=None, help="CLUSTERSxNCSxSLOTS instead of the spec's, e.g. 2x4x4")
    b.add_argument("--instances", type=int, default=1000, help="instances running during the trials")
    b.add_argument("--batch", type=int, default=25, help="instances per RunInstances")
    b.add_argument("--trials", type=int, default=3, help="crash trials per target (CLC, Walrus, CC, SC)")
    b.add_argument("--in-flight", type=int, default=None,
                   help="no RunInstances while this many instances are pending (default: no limit)")
    b.add_argument("--launch-timeout", type=_positive_seconds, default=None,
                   help="seconds from the first RunInstances after which the count running is taken "
                        "(default: 2.5 x the 120 s target)")
    b.add_argument("--no-default", action="store_true", help="skip the default deployment's trials (the outage comparison)")
    b.add_argument("--no-baseline", action="store_true", help="skip plain Mininet")

    b = add("sdn", _bench_sdn, "flow setup, routed against direct throughput, flow-table size (root)")
    b.add_argument("--setups", type=int, default=40, help="new instances timed for flow setup")
    b.add_argument("--seconds", type=float, default=5.0, help="length of one iperf3 run")
    b.add_argument("--rounds", type=int, default=3, help="iperf3 runs per path (direct, routed)")

    b = add("soak", _bench_soak, "HA pairs under loss, a CPU hog and arbitrators down: false failovers (root)")
    b.add_argument("--minutes", type=float, default=10.0, help="how long to run")
    b.add_argument("--interval-ms", type=int, default=50, help="heartbeat interval")
    b.add_argument("--misses", type=int, default=3, help="silent intervals before a peer is dead")
    b.add_argument("--loss", type=float, default=1.0, help="percent of heartbeat packets dropped")
    b.add_argument("--loss-paths", choices=["heartbeat", "all"], default="heartbeat",
                   help="drop on the heartbeat link only, or also heartbeats on the cloud network")
    b.add_argument("--hog-cores", type=int, default=1, help="cores kept busy by a CPU hog")


def cmd_vm(args) -> int:
    """The kernel lane: tests or any command on a kernel with openvswitch, netem and 802.1Q."""
    from .testbed import rundir as rd
    from .testbed import vm

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.action == "serve" and argv:
        raise SystemExit(f"eucalab vm serve: takes no command (got {' '.join(argv)}); options go before "
                         "the action (eucalab vm [--out DIR] [--timeout S] serve); it serves until Ctrl-C or SIGTERM")
    if args.action == "run" and not argv:
        raise SystemExit("eucalab vm run: give the command to run inside the VM, e.g. "
                         "eucalab vm run -- .venv/bin/eucalab check")
    if args.action == "serve" and os.geteuid() != 0:
        raise SystemExit("eucalab vm serve: needs root (qemu's tap device, its address on this machine)")
    # Absolute: the server's ssh configuration names its keys by this path.
    out = Path(args.out).resolve() if args.out else rd.new_run_dir(
        {"test": "kernel-lane", "serve": "vm-server"}.get(args.action, "vm"))
    timeout_s = args.timeout if args.timeout is not None or args.action == "serve" else vm.DEFAULT_TIMEOUT_S
    try:
        if args.action == "serve":
            from .testbed.vm_server import main_serve

            return main_serve(out, accel=args.accel, timeout_s=timeout_s)
        if args.action == "test":
            return vm.main_test(argv, out, accel=args.accel, timeout_s=timeout_s,
                                here=None if args.where == "auto" else args.where == "here")
        return vm.main_run(argv, out, accel=args.accel, timeout_s=timeout_s)
    except vm.VMError as exc:
        raise SystemExit(f"eucalab vm: {exc}") from None


def cmd_run(args) -> int:
    """The main job: the default failover experiment on the default deployment."""
    from .failover.runner import DEFINITIONS

    args.definition = str(DEFINITIONS / "default.yaml")
    return cmd_experiment(args)


def cmd_experiment(args) -> int:
    import json

    from .failover import safe_floor
    from .failover.experiment import Experiment
    from .failover.runner import run_definition

    intervals, resume = getattr(args, "intervals", None), getattr(args, "resume", None)
    try:  # a bad definition: its error, before anything is checked or built
        is_floor = safe_floor.is_safe_floor(args.definition)
        (safe_floor.SafeFloor if is_floor else Experiment).load(args.definition)
    except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError) as e:
        # The loaders name the file and the field; a value of the wrong type fails deeper.
        said = (str(e) if str(args.definition) in str(e)
                else f"{args.definition}: not a valid definition: {type(e).__name__}: {e}")
        raise SystemExit(f"eucalab: {said}") from None
    if not is_floor and (getattr(args, "soak_minutes", None) is not None or intervals is not None
                         or resume is not None):
        raise SystemExit("eucalab: --soak-minutes, --intervals and --resume are for safe-floor definitions "
                         "(kind: safe-floor)")
    if resume is not None:
        if getattr(args, "soak_minutes", None) is not None or intervals is not None:
            raise SystemExit("eucalab: --resume finishes a run as it was defined: no --soak-minutes or --intervals")
        try:
            stored, _ = safe_floor.resumable(resume)
        except ValueError as e:
            raise SystemExit(f"eucalab: {e}") from None
        if safe_floor.SafeFloor.load(args.definition).name != stored.name:
            raise SystemExit(f"eucalab: --resume: {resume} is a run of {stored.name!r}, not of {args.definition}")
    if intervals is not None:
        try:
            safe_floor.only_intervals(safe_floor.SafeFloor.load(args.definition), intervals)
        except ValueError as e:
            raise SystemExit(f"eucalab: {e}") from None
    if os.geteuid() != 0:
        raise SystemExit("eucalab: experiments build networks and need root (make run does it)")
    if is_floor:
        run_dir = safe_floor.run(args.definition, trials=args.trials, soak_minutes=getattr(args, "soak_minutes", None),
                                 intervals=intervals, resume=resume)
        print((run_dir / "report.md").read_text())
        print(f"report: {run_dir / 'report.md'} (soaks/ and trials/ beside it)")
        return 0
    only = [t for t in (getattr(args, "only", None) or "").split(",") if t] or None
    run_dir = run_definition(args.definition, trials=args.trials, only=only)
    summary = json.loads((run_dir / "summary.json").read_text())
    for name, s in summary.items():
        o = s["outage_ms"]
        good = s.get("as_expected", s["ok"])
        print(f"  {name:40} {good:>3}/{s['trials']:<3} as expected   outage p50 {o.get('p50', float('nan')):8.1f} ms"
              f"   max {o.get('max', float('nan')):8.1f} ms   lost writes {s['lost_writes']}")
    print(f"report: {run_dir / 'report.md'} (and report.html, plots, raw data beside it)")
    bad = [n for n, s in summary.items() if s.get("as_expected", s["ok"]) < s["trials"]]
    return 1 if bad else 0


def cmd_report(args) -> int:
    from .analysis.report import build
    from .failover import safe_floor

    if safe_floor.is_run(args.dir):  # its own report, from its soaks and its trials' summary
        try:
            print(f"report written: {safe_floor.build(args.dir) / 'report.md'}")
        except ValueError as e:
            raise SystemExit(f"eucalab report: {e}") from None
        return 0
    print(f"report written: {build(args.dir)}")
    return 0


def cmd_compare(args) -> int:
    from .analysis.report import compare

    print(compare(args.a, args.b))
    return 0


def cmd_services(args) -> int:
    from .testbed.services import services_command

    for transition in ("enable", "disable", "stop", "start"):
        name = getattr(args, transition)
        if name:
            return services_command(args.run_dir, transition.upper(), name)
    return services_command(args.run_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eucalab", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("check", help="preflight: what this machine has, what is missing and how to fix it")
    s.add_argument("--servers", metavar="SPEC|HOST,...",
                   help="also check the other servers of a deployment (a spec's servers, or a list): "
                        "ssh as root, the same Mininet and eucalab, a common tunnel type, the MTU")
    s.add_argument("--ssh-config", metavar="FILE", help="ssh client configuration for the servers (ssh -F)")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("describe", help="hosts, networks, addresses and HA pairs of a spec")
    s.add_argument("spec", nargs="?", help="deployment spec (YAML); default: the default deployment")
    s.add_argument("--png", metavar="FILE", help="also draw the deployment diagram to FILE")
    s.set_defaults(fn=cmd_describe)

    s = sub.add_parser("up", help="bring a deployment up and open the Mininet CLI")
    s.add_argument("spec", nargs="?")
    s.add_argument("--script", metavar="FILE", help="run these Mininet CLI commands, then tear down")
    s.add_argument("--run-dir", metavar="DIR", help="run directory (default results/<UTC>-<name>)")
    s.add_argument("--no-services", action="store_true", help="network only, no component processes")
    s.add_argument("--ssh-config", metavar="FILE",
                   help="ssh client configuration for the spec's other servers (ssh -F; default: ssh's own)")
    s.set_defaults(fn=cmd_up)

    s = sub.add_parser("cleanup", help="remove what crashed runs left (only what they recorded)")
    s.add_argument("--force", action="store_true", help="also runs whose driver still lives")
    s.set_defaults(fn=cmd_cleanup)

    s = sub.add_parser("bench", help="benchmarks that print figures")
    _add_bench_parsers(s)
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("vm", help="the kernel lane: a VM with Debian's kernel (OVS kernel datapath, netem, 802.1Q)")
    s.add_argument("action", choices=["test", "run", "serve"],
                   help="test: the kernel-lane tests (tests/kernel); run: any command inside the VM; "
                        "serve: the VM as a second server for a deployment over two servers (docs/cluster.md)")
    s.add_argument("argv", nargs=argparse.REMAINDER, help="test: extra pytest arguments; run: the command")
    s.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto",
                   help="auto: KVM where a guest boots under it, else TCG emulation")
    s.add_argument("--where", choices=["auto", "here", "vm"], default="auto",
                   help="test: auto runs here when this kernel has the features, else in the VM")
    s.add_argument("--timeout", type=float, default=None,
                   help="seconds before qemu is stopped (test, run: default 20 minutes; "
                        "serve: none, it serves until Ctrl-C or SIGTERM)")
    s.add_argument("--out", metavar="DIR", help="output directory (default results/<UTC>-kernel-lane or -vm)")
    s.set_defaults(fn=cmd_vm)

    s = sub.add_parser("run", help="the main job: the default failover experiment")
    s.add_argument("--trials", type=_positive_int, help="at most this many trials per configuration")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("experiment", help="run a failover experiment definition (YAML)")
    s.add_argument("definition", help="e.g. experiments/failover/definitions/default.yaml")
    s.add_argument("--trials", type=_positive_int, help="at most this many trials per configuration")
    s.add_argument("--soak-minutes", type=float, help="safe-floor definitions: soak each setting this long")
    s.add_argument("--intervals", metavar="MS,...", type=_interval_list,
                   help="safe-floor definitions: soak only these of the definition's settings (e.g. 20,15,10)")
    s.add_argument("--resume", metavar="RUN_DIR",
                   help="safe-floor definitions: finish a run that was cut (its missing soaks, then the crash "
                        "trials, again from the first; --trials may lower their number)")
    s.add_argument("--only", metavar="TARGET,...",
                   help="run only the sets of these targets (e.g. clc,walrus): a long definition in several runs")
    s.set_defaults(fn=cmd_experiment)

    s = sub.add_parser("report", help="regenerate plots and report of a run from its raw data")
    s.add_argument("dir")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("compare", help="two runs' results side by side")
    s.add_argument("a")
    s.add_argument("b")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("services", help="every service's state and each pair's redundancy (euca-describe-services); "
                       "change one (euca-modify-service)")
    s.add_argument("run_dir", nargs="?", help="a run directory (default: the newest live run)")
    change = s.add_mutually_exclusive_group()
    for transition, what in (("enable", "a planned switchover to NAME"), ("disable", "a planned switchover away "
                             "from NAME"), ("stop", "NAME into maintenance (STOPPED: no failover to it)"),
                             ("start", "NAME out of maintenance (a standby again)")):
        change.add_argument(f"--{transition}", metavar="NAME", help=what)
    s.set_defaults(fn=cmd_services)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        print("interrupted; everything the run created was removed", file=sys.stderr)
        return 130
    except BaseException as exc:
        from .testbed.deployment import DeploymentError, Terminated

        if isinstance(exc, Terminated):
            print(f"terminated by {exc}; everything the run created was removed", file=sys.stderr)
            return 143
        if isinstance(exc, DeploymentError):
            print(f"eucalab: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
