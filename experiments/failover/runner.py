"""Failover experiments: crash a primary, measure the outage a user sees, repeat; keepalived beside it.

    eucalab run                                 the default experiment (experiments/failover/definitions/default.yaml)
    eucalab experiment FILE                     any other definition (copy and edit the default)

Flow: definition -> deployment -> workload (an instance with an elastic IP, an
object, a signed EC2 request) -> trials (probe, fault at a seeded random phase,
recovery, restore) -> raw data (trials.jsonl, probes.jsonl, every component's
events) -> report (experiments/analysis/report.py).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import yaml

from components.common.events import read_events
from components.common.modes import features
from topologies.spec import COMPONENT_KINDS, spec_from_dict

from ..analysis.measures import Probe, outage_span, resolution
from ..testbed.deployment import REALTIME_PRIORITY, Deployment, _child_env, wait_until
from .faults import (CATALOGUE, FAILOVER, PLANNED_SWITCHOVER, SWITCHOVER, FaultContext, check_available,
                     enabled_intervals, judge, overlap)
from ..testbed.preflight import datapath_ports
from ..testbed.rundir import REPO_ROOT, new_run_dir, write_json

DEFINITIONS = REPO_ROOT / "experiments" / "failover" / "definitions"
TARGETS = (*COMPONENT_KINDS, "keepalived")
FAULTS = tuple(CATALOGUE)  # experiments/failover/faults.py: what each does and the outcome it expects
# keepalived's equivalents: its responder crashes with it, or its master's priority is lowered.
KEEPALIVED_FAULTS = ("sigkill", PLANNED_SWITCHOVER)
MAINTENANCE_WEIGHT = 30  # keepalived's planned switchover: priorities are 100 and 90


@dataclass
class TrialSet:
    target: str  # clc walrus cc sc keepalived
    trials: int
    fault: str = "sigkill"
    advert_ms: float | None = None  # keepalived only: VRRP advert interval
    label: str | None = None
    hold_s: float | None = None  # how long a fault that expects no failover is held (default: see hold())
    params: dict = field(default_factory=dict)  # the fault's own parameters (loss_percent, network, ...)
    # Spec fields this set changes ({mode: EDGE}): it runs on a deployment of its own, shared
    # with the sets that change the same fields (experiment.deployments()).
    spec: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.target == "keepalived":
            planned = " planned switchover" if self.fault == PLANNED_SWITCHOVER else ""
            return f"keepalived advert {self.advert_ms:g} ms{planned}"
        words = {"sigkill": "crash", "host": "host failure", "sigstop": "hang",
                 PLANNED_SWITCHOVER: "planned switchover"}
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        return f"eucalab {self.target.upper()} {words.get(self.fault, self.fault)}{extra}"


@dataclass
class Experiment:
    name: str = "default"
    seed: int = 1
    spec: dict = field(default_factory=lambda: {"name": "default"})
    probe_interval_ms: float = 10.0
    probe_timeout_ms: float = 300.0
    recovery_timeout_s: float = 10.0
    capture: bool = True  # keep a pcap (user host) and flow dumps for every trial that went wrong
    sdn: bool | None = None  # run the SDN controller (the 'controller' fault needs it); None: as the spec says
    sets: list[TrialSet] = field(default_factory=list)
    # Parameters swept, each point on its own deployment: "spec.heartbeat.interval_ms",
    # "probe_interval_ms", "set.fault", "set.params.loss_percent", ... -> list of values.
    sweep: dict = field(default_factory=dict)

    def at(self, point: dict) -> "Experiment":
        """This experiment with one sweep point's values set; set names say the point."""
        import copy

        e = copy.deepcopy(self)
        e.sweep = {}
        for path, value in point.items():
            head, *rest = path.split(".")
            if head == "spec":
                _set_path(e.spec, rest, value, path)
            elif head == "set":
                for ts in e.sets:
                    if ts.target == "keepalived" and rest[:1] != ["trials"]:
                        continue  # the baseline is keepalived as it is: only its trial count follows
                    if not rest or not hasattr(ts, rest[0]) or rest[0] == "label":
                        raise ValueError(f"sweep: {path!r} names no trial-set field")
                    if len(rest) == 1:
                        setattr(ts, rest[0], value)
                    else:
                        _set_path(getattr(ts, rest[0]), rest[1:], value, path)
            elif head in {f.name for f in dataclasses.fields(self)} - {"sets", "sweep", "spec", "name"} and not rest:
                setattr(e, head, value)
            else:
                raise ValueError(f"sweep: cannot set {path!r} (spec.<field>, set.<field> or an experiment field)")
        if point:
            for ts in e.sets:
                if ts.fault not in CATALOGUE:
                    raise ValueError(f"sweep: fault {ts.fault!r} is not in the catalogue")
                if ts.target not in TARGETS or (ts.target == "keepalived" and ts.advert_ms is None):
                    raise ValueError(f"sweep: target {ts.target!r} is not one of {', '.join(TARGETS[:-1])}")
                ts.label = f"{ts.name} [{_point_label(point)}]"
        return e

    def deployments(self) -> list["Experiment"]:
        """This experiment split by deployment: the sets with no ``spec`` of their own on the
        experiment's spec, then each distinct set ``spec`` (merged into it) with its sets."""
        import copy

        groups: dict[str, list[TrialSet]] = {}
        for ts in self.sets:
            groups.setdefault(json.dumps(ts.spec, sort_keys=True), []).append(ts)
        out = []
        for key, sets in sorted(groups.items(), key=lambda kv: kv[0] != "{}"):
            e = copy.deepcopy(self)
            e.sets = copy.deepcopy(sets)
            for path, value in _flatten(json.loads(key)):
                _set_path(e.spec, path, value, "spec." + ".".join(path))
            out.append(e)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Experiment":
        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        sets = []
        set_fields = {f.name for f in dataclasses.fields(TrialSet)}
        for i, s in enumerate(data.pop("sets", [])):
            if not isinstance(s, dict):
                raise ValueError(f"{path}: sets[{i}] must be a mapping")
            if set(s) - set_fields:
                raise ValueError(f"{path}: sets[{i}]: unknown field(s) {', '.join(sorted(set(s) - set_fields))}; "
                                 f"known: {', '.join(sorted(set_fields))}")
            if s.get("target") not in TARGETS:
                raise ValueError(f"{path}: sets[{i}].target must be one of {', '.join(TARGETS)}")
            if s.get("fault", "sigkill") not in FAULTS:
                raise ValueError(f"{path}: sets[{i}].fault must be one of {', '.join(FAULTS)}")
            if s.get("target") == "keepalived" and s.get("fault", "sigkill") not in KEEPALIVED_FAULTS:
                raise ValueError(f"{path}: sets[{i}]: the keepalived baseline is measured with "
                                 f"{' or '.join(KEEPALIVED_FAULTS)} only")
            if not isinstance(s.get("trials"), int) or s["trials"] < 1:
                raise ValueError(f"{path}: sets[{i}].trials must be a positive integer")
            sets.append(TrialSet(**s))
        exp = cls(sets=sets, **data)
        try:
            for point in sweep_points(exp.sweep):
                for e in exp.at(point).deployments():
                    spec_from_dict(e.spec)
        except Exception as exc:
            raise ValueError(f"{path}: {exc}") from None
        return exp


class Prober:
    """The user's requests during a trial (experiments/failover/prober.py), in a process of its own on
    the user host, so that nothing the harness does meanwhile (restarting a member, reading
    event logs) can delay them; each completed request arrives as a line on its stdout."""

    def __init__(self, dep: Deployment, url: str, headers: dict, interval: float, timeout: float,
                 expect: tuple[str, bytes]):
        self.dep, self.url, self.headers = dep, url, headers
        self.interval, self.timeout, self.expect = interval, timeout, expect
        self.probes: list[Probe] = []
        self.overhead: dict | None = None  # the prober's own cost, its last line (experiments/failover/prober.py)
        self._lock = threading.Lock()
        self._popen = None
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> "Prober":
        kind, want = self.expect
        argv = [sys.executable, "-m", "experiments.failover.prober", "--url", self.url, "--interval", str(self.interval),
                "--timeout", str(self.timeout), "--expect", kind, "--body-hex", want.hex()]
        if self.dep.realtime:
            # The members it measures run at this priority: the prober must not queue behind them.
            argv += ["--realtime-priority", str(REALTIME_PRIORITY)]
        for name, value in self.headers.items():
            argv += ["--header", f"{name}:{value}"]
        self._popen = self.dep["user"].popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, cwd=str(REPO_ROOT), env=_child_env())
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._popen.stdout:
            if line.startswith(b"#"):
                self.overhead = json.loads(line[1:])
                continue
            sent, done, ok = line.split()
            with self._lock:
                self.probes.append(Probe(float(sent), float(done), ok == b"1"))

    def snapshot(self) -> list[Probe]:
        with self._lock:
            return list(self.probes)

    def stop(self) -> list[Probe]:
        """End the prober (its requests in flight finish first, within the timeout)."""
        if self._popen is not None:
            try:
                self._popen.stdin.close()  # the prober's signal to stop
            except OSError:
                pass
            try:
                self._popen.wait(timeout=self.timeout + 5)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
            self._reader.join(timeout=5)
            self._popen.stdout.close()
        return sorted(self.snapshot(), key=lambda p: p.sent)


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


PROBE_BLOCK = b"eucalab probe block\n" * 16


def _user_http(dep: Deployment, method: str, url: str, body: bytes | None = None,
               timeout: float = 5.0, headers: dict | None = None) -> tuple[int, bytes]:
    """One plain HTTP request from the user host (no retries); (0, error) when it fails."""
    u = urlsplit(url)
    with dep.in_host("user"):  # this thread's sockets belong to the user host
        try:
            c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
            c.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
            r = c.getresponse()
            out = r.status, r.read()
            c.close()
            return out
        except (OSError, http.client.HTTPException) as exc:
            return 0, repr(exc).encode()


def _set_path(tree: dict, keys: list[str], value, path: str) -> None:
    if not isinstance(tree, dict) or not keys:
        raise ValueError(f"sweep: cannot set {path!r}")
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
        if not isinstance(tree, dict):
            raise ValueError(f"sweep: cannot set {path!r}")
    tree[keys[-1]] = value


def _flatten(tree: dict, prefix: tuple = ()) -> list[tuple[list[str], object]]:
    """(path, value) for every leaf of a nested mapping."""
    out = []
    for k, v in tree.items():
        out += _flatten(v, prefix + (k,)) if isinstance(v, dict) else [(list(prefix + (k,)), v)]
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


class _Capture:
    """What the user host's interface carried during one trial (tcpdump), kept with the
    switches' flow tables only for a trial that went wrong."""

    def __init__(self, dep: Deployment, path: Path):
        import tempfile

        self.dep, self.path, self.kept, self.done = dep, path, False, False
        # Written to memory (/dev/shm) while the trial runs, moved to the run directory only
        # when kept: a pcap per trial written to disk competes with the components' own files.
        self.tmp = Path(tempfile.mkdtemp(prefix="eucalab-capture-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                         else None)) / "trial.pcap"
        intf = dep.plan.hosts["user"].interfaces[0].name
        self.proc = dep.start("tcpdump", "user", label="tcpdump", wait=False, argv=[
            "tcpdump", "-i", intf, "-n", "-s", "256", "-U", "--immediate-mode", "-w", str(self.tmp)])

    def finish(self, keep: bool) -> None:
        self.done = True
        self.dep.kill("user", "tcpdump", sig=signal.SIGTERM)
        try:
            self.proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.dep.kill("user", "tcpdump")
            self.proc.popen.wait(timeout=5)
        import shutil

        if keep:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.tmp.exists():
                shutil.move(str(self.tmp), self.path.with_suffix(".pcap"))
        shutil.rmtree(self.tmp.parent, ignore_errors=True)
        if not keep:
            return
        self.kept = True
        dumps = []
        for sw in self.dep.plan.switches:
            try:
                out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", sw],
                                     capture_output=True, text=True, timeout=10)
                dumps.append(f"# {sw}\n{out.stdout}{out.stderr}")
            except (OSError, subprocess.TimeoutExpired) as exc:  # the record matters more than the dump
                dumps.append(f"# {sw}\n{exc!r}")
        self.path.with_suffix(".flows.txt").write_text("\n".join(dumps))


KEEPALIVED_VIP = "10.0.0.10"  # the CLC's VIP: the baseline runs on the CLC pair's hosts


def keepalived_conf(dep: Deployment, host: str, advert_ms: float, priority: int,
                    rt_priority: int | None = None, planned: bool = False) -> Path:
    """keepalived's configuration on ``host``: one VRRP instance holding the CLC's VIP
    (VRRPv3 below 1 s adverts), ``nopreempt``; ``rt_priority`` runs its VRRP process at
    SCHED_FIFO (``vrrp_rt_priority``), as eucalab's HA members run. For planned
    switchovers (``planned``) the members preempt and the priority follows a track file
    (``maintenance``: 1 lowers it by MAINTENANCE_WEIGHT, 0 restores it), the way operators
    move a VRRP master on purpose."""
    intf = dep.plan.hosts[host].intf("cloud").name
    d = dep.host_dir(host, "keepalived")
    version = "3" if advert_ms < 1000 else "2"
    advert = f"{advert_ms / 1000:g}"
    rt = f"\n    vrrp_rt_priority {int(rt_priority)}" if rt_priority else ""
    conf = d / "keepalived.conf"
    track = d / "maintenance"
    if planned:
        track.write_text("0\n")
    tracking = (f"""track_file maintenance {{
    file {track}
    weight -{MAINTENANCE_WEIGHT}
}}
""" if planned else "")
    preemption = "track_file {\n        maintenance\n    }" if planned else "nopreempt"
    conf.write_text(f"""global_defs {{
    router_id {host}
    vrrp_version {version}{rt}
}}
{tracking}vrrp_instance EUCALAB {{
    state BACKUP
    {preemption}
    interface {intf}
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {KEEPALIVED_VIP}/16 dev {intf}
    }}
}}
""")
    return conf


def start_keepalived(dep: Deployment, host: str, advert_ms: float, priority: int,
                     rt_priority: int | None = None, planned: bool = False) -> None:
    conf = keepalived_conf(dep, host, advert_ms, priority, rt_priority, planned)
    d = conf.parent
    for stale in ("keepalived.pid", "vrrp.pid"):  # left by a crashed instance
        (d / stale).unlink(missing_ok=True)
    dep.start("keepalived", host, label="keepalived", wait=False, argv=[
        "keepalived", "-n", "-l", "-P", "-f", str(conf), "-p", str(d / "keepalived.pid"),
        "-r", str(d / "vrrp.pid")])


def start_http(dep: Deployment, host: str) -> None:
    """The trivial service keepalived fronts: an HTTP responder on port 8080."""
    dep.start("http8080", host, label="http8080", wait=False,
              argv=[os.sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080"])
    wait_until(lambda: dep.listening(host, 8080), 10, 0.05)


def drop_keepalived_vip(dep: Deployment, host: str) -> None:
    dep[host].cmd(f"ip addr del {KEEPALIVED_VIP}/16 dev {dep.plan.hosts[host].intf('cloud').name} 2>/dev/null")


def keepalived_holders(dep: Deployment, hosts: list[str]) -> list[str]:
    """The hosts that hold the baseline's VIP now."""
    return [h for h in hosts if f"{KEEPALIVED_VIP}/16" in dep[h].cmd("ip -o -4 addr show")]


def start_keepalived_pair(dep: Deployment, advert_ms: float, rt_priority: int | None = None,
                          planned: bool = False) -> list[str]:
    """keepalived and its HTTP responder on the CLC pair's hosts, with the eucalab CLC out
    of the way (the same hosts and VIP); returns the hosts."""
    hosts = dep.plan.pair("clc").members
    dep.admit(KEEPALIVED_VIP, 8080)  # the site's firewall lets users reach the baseline's service
    for h in hosts:
        if (h, "clc") in dep.processes and dep.process(h, "clc").alive():
            dep.stop(h, "clc")
        drop_keepalived_vip(dep, h)
        if (h, "http8080") not in dep.processes or not dep.processes[(h, "http8080")].alive():
            start_http(dep, h)
    for i, h in enumerate(hosts):
        start_keepalived(dep, h, advert_ms, 100 - 10 * i, rt_priority, planned)
    return hosts


def stop_keepalived_pair(dep: Deployment, hosts: list[str]) -> None:
    for h in hosts:
        dep.stop(h, "keepalived")
        drop_keepalived_vip(dep, h)


class Runner:
    def __init__(self, exp: Experiment, run_dir: Path | None = None, progress: bool = True, observer=None):
        self.exp = exp
        # Told before a deployment's services start (``starting(dep)``), when they are up
        # (``services_up(dep, seconds)``) and when the workload is ready, before the first
        # trial (``prepared(dep)``): a benchmark measures there (experiments/bench/scale.py).
        self.observer = observer
        self.run_dir = run_dir or new_run_dir(exp.name)
        self.rng = random.Random(exp.seed)
        self.progress = progress
        self.written: set = set()  # (set, trial) recorded at the current sweep point
        self.trials_file = open(self.run_dir / "trials.jsonl", "a", buffering=1)
        self.probes_file = open(self.run_dir / "probes.jsonl", "a", buffering=1)

    # -- workload ---------------------------------------------------------------------------------

    def _prepare(self, dep: Deployment) -> dict:
        from botocore.auth import SigV4Auth

        c = dep.credentials
        ep = dep.plan.endpoints()
        w: dict = {}
        ec2, s3 = dep.aws_client("ec2"), dep.aws_client("s3")  # every call from the user host
        s3.create_bucket(Bucket="probe")
        s3.put_object(Bucket="probe", Key="object", Body=b"eucalab probe object\n")
        s3.put_object(Bucket="probe", Key="image.img", Body=os.urandom(1 << 20))
        w["presigned"] = s3.generate_presigned_url("get_object", Params={"Bucket": "probe", "Key": "object"},
                                                   ExpiresIn=6 * 3600)
        emi = ec2.register_image(ImageLocation="probe/image.img", Name="probe-image")["ImageId"]
        if features(dep.spec.mode.value).security_groups:  # SYSTEM and STATIC have none
            gid = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1,
                                Placement={"AvailabilityZone": "cluster1"})["Instances"][0]["InstanceId"]
        if not wait_until(lambda: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
                     ["State"]["Name"] == "running", 30, 0.1):
            raise RuntimeError("the probe instance did not reach running")
        if features(dep.spec.mode.value).elastic_ips:
            eip = ec2.allocate_address()["PublicIp"]  # users reach it through the CC's NAT
            ec2.associate_address(InstanceId=iid, PublicIp=eip)
        else:  # SYSTEM and STATIC: the site routes VMs, users reach an instance's own address
            eip = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
        # A volume attached to the instance: the SC is probed by block reads through it (the
        # instance's virtio disk channel to its NC, the NC's block session to the SC VIP).
        vol = ec2.create_volume(Size=1, AvailabilityZone="cluster1")["VolumeId"]
        ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/vdb")
        w["disk"] = f"http://{eip}/volumes/{vol}/blocks"
        if not wait_until(lambda: _user_http(dep, "PUT", w["disk"] + "?offset=0", PROBE_BLOCK)[0] == 200, 30, 0.2):
            raise RuntimeError("the probe volume did not take a block write through the instance")
        w.update(ec2=ec2, s3=s3, iid=iid, eip=eip, sigv4=SigV4Auth, creds=c, ep=ep, dep=dep)
        self._fresh_clients(w)
        return w

    @staticmethod
    def _fresh_clients(w: dict) -> None:
        """New clients (new connection pools): pooled connections to a crashed primary would
        each fail once, which says nothing about the data."""
        short = dict(connect_timeout=2, read_timeout=5)  # a request stuck on a dead primary must not stall a trial
        w["ec2"], w["s3"] = w["dep"].aws_client("ec2", **short), w["dep"].aws_client("s3", **short)

    def _describe_request(self, w: dict) -> tuple[str, dict]:
        """A DescribeInstances GET signed once per trial (signing per probe would cost more than it measures)."""
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        url = w["ep"]["clc"] + "?Action=DescribeInstances&Version=2016-11-15"
        req = AWSRequest(method="GET", url=url)
        w["sigv4"](Credentials(w["creds"].access_key, w["creds"].secret_key), "ec2", "eucalyptus").add_auth(req)
        headers = dict(req.prepare().headers)
        headers["Host"] = urlsplit(url).netloc
        return url, headers

    def _probe_for(self, target: str, w: dict) -> tuple[str, dict, tuple[str, bytes]]:
        """The URL a user requests of ``target``, its headers, and what a success returns
        (experiments/failover/prober.py: equals, contains or stripped, and the bytes)."""
        if target == "clc":
            url, headers = self._describe_request(w)
            return url, headers, ("contains", b"DescribeInstancesResponse")
        if target == "walrus":
            return w["presigned"], {}, ("equals", b"eucalab probe object\n")
        if target == "sc":
            return f"{w['disk']}?offset=0&length={len(PROBE_BLOCK)}", {}, ("equals", PROBE_BLOCK)
        if target == "cc":
            return f"http://{w['eip']}/", {}, ("stripped", w["iid"].encode())
        return f"http://{KEEPALIVED_VIP}:8080/", {}, ("contains", b"")

    # -- one trial ------------------------------------------------------------------------------------

    def _pair(self, dep: Deployment, target: str):
        return dep.plan.pair(target, 1 if target in ("cc", "sc") else None)

    @staticmethod
    def _retry(fn, attempts: int = 5):
        """A client's pooled connection to the old primary fails once after a failover:
        like any user, retry (the probes themselves never retry)."""
        for i in range(attempts):
            try:
                return fn()
            except Exception:
                if i == attempts - 1:
                    raise
                time.sleep(0.2)

    def _marker_write(self, target: str, w: dict, n: int) -> str | None:
        """An acknowledged write just before the fault; checked after it (lost writes)."""
        from botocore.exceptions import ClientError

        if target == "clc":
            name = f"marker-{n}-{self.rng.randrange(1 << 30)}"

            def create():
                try:
                    w["ec2"].create_security_group(GroupName=name, Description="written before a fault")
                except ClientError as exc:  # an earlier attempt did get through
                    if exc.response["Error"]["Code"] != "InvalidGroup.Duplicate":
                        raise
            self._retry(create)
            return name
        if target == "walrus":
            key = f"marker-{n}-{self.rng.randrange(1 << 30)}"
            self._retry(lambda: w["s3"].put_object(Bucket="probe", Key=key, Body=key.encode()))
            return key
        if target == "sc":  # a block of its own, written through the instance's volume
            offset = 4096 * self.rng.randrange(1, 256)
            body = f"marker-{n}-{self.rng.randrange(1 << 30)}".encode()

            def put():
                status, answer = _user_http(w["dep"], "PUT", f"{w['disk']}?offset={offset}", body)
                if status != 200:
                    raise RuntimeError(f"block write answered {status}: {answer[:200]!r}")
            self._retry(put)
            return f"{offset}:{body.decode()}"
        return None

    def _marker_present(self, target: str, w: dict, marker: str | None) -> bool | None:
        if marker is None:
            return None
        self._fresh_clients(w)
        try:
            if target == "clc":
                groups = self._retry(lambda: w["ec2"].describe_security_groups()["SecurityGroups"])
                return marker in [g["GroupName"] for g in groups]
            if target == "sc":
                offset, body = marker.split(":", 1)

                def get():
                    status, data = _user_http(w["dep"], "GET", f"{w['disk']}?offset={offset}&length={len(body)}")
                    if status != 200:
                        raise RuntimeError(f"block read answered {status}")
                    return data
                return self._retry(get) == body.encode()
            return self._retry(lambda: w["s3"].get_object(Bucket="probe", Key=marker)["Body"].read()) == \
                marker.encode()
        except Exception as exc:
            self._check_error = repr(exc)
            return False

    def hold(self, dep: Deployment, ts: TrialSet) -> float:
        """How long a fault that expects no failover is held: long enough for every
        detector to have fired if it were going to (heartbeat misses, arbitrator rounds)."""
        if ts.hold_s is not None:
            return ts.hold_s
        hb, arb = dep.spec.heartbeat, dep.spec.arbitrators
        return max(2.0, 4 * hb.interval_ms * hb.misses / 1000, (arb.fail_after + 1) * arb.period_s + arb.timeout_s)

    def trial(self, dep: Deployment, ts: TrialSet, n: int, w: dict) -> dict:
        """One fault: probe, inject at a seeded phase, wait for its effect, restore, judge."""
        fault = CATALOGUE[ts.fault]
        pair = self._pair(dep, ts.target)
        record = {"set": ts.name, "target": ts.target, "fault": ts.fault, "expect": fault.expect, "trial": n,
                  "params": ts.params}
        # Every trial starts from full redundancy: one ENABLED member, its peer DISABLED and caught up.
        # A member whose process is gone (it died on its own: its log says why) is started
        # again, once, and the trial says so; left dead, every later trial would be void.
        revived = [m for m in pair.members if dep.member_state(m) == "DEAD"]
        for m in revived:
            dep.events.emit("member.revived", host=m, label=pair.kind, trial=n)
            dep.start(pair.kind, m, wait=False)
        if revived:
            record["revived"] = revived
        markers = [self._marker_write(ts.target, w, n)]
        if not wait_until(lambda: dep.redundant(pair), 20):
            record.update(status="invalid", error="the pair was not one ENABLED and one DISABLED before the fault",
                          states={m: dep.member_state(m) for m in pair.members})
            return record
        primary = next(m for m in pair.members if dep.member_state(m) == "ENABLED")
        peer = next(m for m in pair.members if m != primary)
        record["primary"] = primary
        ctx = FaultContext(dep, pair, primary, peer, params=dict(ts.params),
                           write_marker=lambda: self._marker_write(ts.target, w, n))
        url, headers, expect = self._probe_for(ts.target, w)
        capture = _Capture(dep, self.run_dir / "captures" / f"{_slug(ts.name)}-{n}") if self.exp.capture else None
        probe = Prober(dep, url, headers, self.exp.probe_interval_ms / 1000,
                       self.exp.probe_timeout_ms / 1000, expect).start()
        try:
            psutil.cpu_percent(None)
            time.sleep(0.3)  # warm-up: probes succeed before the fault (on a loaded machine, wait for them)
            if not wait_until(lambda: sum(p.ok for p in probe.snapshot()) >= 3, 5, 0.01):
                probe.stop()
                if capture is not None:
                    capture.finish(keep=True)
                record.update(status="invalid", error="users were not served before the fault (warm-up)")
                return record
            # A random phase relative to the heartbeat, seeded: faults do not line up with ticks.
            phase = self.rng.uniform(0, dep.spec.heartbeat.interval_ms / 1000)
            time.sleep(phase)
            t_fault = _mono()
            error = None
            try:
                fault.inject(ctx)
            except Exception as exc:
                error = f"inject: {exc!r}"
            served_after = lambda: any(p.ok and p.sent >= t_fault for p in probe.snapshot())  # noqa: E731
            if error:
                recovered = False
            elif fault.expect in (FAILOVER, SWITCHOVER):
                recovered = wait_until(lambda: dep.member_state(peer) == "ENABLED" and served_after(),
                                       self.exp.recovery_timeout_s)
            elif ts.fault == "both":
                recovered = wait_until(lambda: any(dep.member_state(m) == "ENABLED" for m in pair.members)
                                       and served_after(), self.exp.recovery_timeout_s)
            else:
                time.sleep(self.hold(dep, ts))
                recovered = True  # judged after the restore: users must be served again then
            t_restore = _mono()
            primary_enabled = dep.member_state(primary) == "ENABLED"
            cpu = psutil.cpu_percent(None)
            try:
                ctx.restore()
            except Exception as exc:
                error = (error + "; " if error else "") + repr(exc)
            # Back to full redundancy: one ENABLED, the other DISABLED (caught up), users served.
            settled = wait_until(lambda: dep.redundant(pair) and any(p.ok and p.sent >= _mono() - 0.2 for p in probe.snapshot()), 20)
            t_settled = _mono()
            if fault.expect != FAILOVER:
                recovered = recovered and settled
            time.sleep(0.1)
            probes = probe.stop()
            span = outage_span(probes, t_fault, t_restore)
            out = span[1] - span[0] if span else None
            fault_probes = [p for p in probes if t_fault <= p.sent < t_restore]
            rejoin_probes = [p for p in probes if p.sent >= t_restore]
            ev = {m: read_events(dep.process(m).events_path) for m in pair.members}
            # Up to full redundancy: a promotion is logged just after the state change and VIP
            # that may already have let users in, and none may follow a restore.
            promotes = [(m, e) for m in pair.members for e in ev[m]
                        if e["event"] == "ha.promote" and t_fault <= e["t_mono"] <= t_settled]
            promote = next((e for m, e in promotes if m == peer), None)
            dead = next((e["detected_at"] for e in ev[peer] if e["event"] == "ha.peer_dead"
                         and e["t_mono"] >= t_fault), None)
            lo = t_fault - 0.5
            # Every time a member's process was crashed or stopped (this trial or an earlier one)
            # ends its ENABLED interval there, not where its successor's log begins.
            signalled = [e for e in read_events(dep.run_dir / "events.jsonl") if e.get("event") == "process.signal"
                         and e.get("signal") in (signal.SIGKILL, signal.SIGSTOP) and e.get("label") == pair.kind]
            silenced = {m: [e["t_mono"] for e in signalled if e["host"] == m] + (
                [ctx.silenced[m]] if m in ctx.silenced else []) for m in pair.members}
            spans = {m: [(max(x, lo), y) for x, y in enabled_intervals(ev[m], t_settled, silenced[m]) if y > lo]
                     for m in pair.members}
            two_enabled = overlap(*spans.values())
            markers += ctx.markers
            self._check_error = None
            lost = sum(1 for mk in markers if self._marker_present(ts.target, w, mk) is False)
            record.update(
                status="error" if error else ("ok" if recovered and out is not None else "no-recovery"),
                new_primary=peer if promote else None, t_fault=t_fault, phase_s=phase, hold_s=t_restore - t_fault,
                outage_s=out, served_again_s=(span[1] - t_fault) if span else None,
                failed_probes=sum(1 for p in fault_probes if not p.ok),
                rejoin_failed_probes=sum(1 for p in rejoin_probes if not p.ok),
                detection_s=(promote["detected_at"] - t_fault) if promote else None,
                takeover_s=(promote["vip_at"] - promote["detected_at"]) if promote else None,
                promote_reason=promote.get("reason") if promote else None,
                peer_dead_after_s=(dead - t_fault) if dead else None, promotions=len(promotes),
                two_enabled_s=two_enabled, probes=len(probes), cpu_percent=cpu, load1=os.getloadavg()[0],
                detection_bound_s=dep.spec.heartbeat.misses * dep.spec.heartbeat.interval_ms / 1000,
                lost_writes=lost, redundancy_restored_s=(t_settled - t_restore) if settled else None,
                two_enabled_at_end=sum(dep.member_state(m) == "ENABLED" for m in pair.members) > 1,
                **ctx.notes, prober=probe.overhead,
                **{f"probe_{k}": v for k, v in resolution(probes).items()})
            if error:
                record["error"] = error
            if self._check_error:
                record["check_error"] = self._check_error
            record["flags"] = judge(fault.expect, promoted=bool(promotes), primary_enabled_after=primary_enabled,
                                    failed_probes=record["failed_probes"], two_enabled_s=two_enabled, lost_writes=lost,
                                    settled=settled, recovered=recovered)
            if revived:
                record["flags"].append(f"{', '.join(revived)} had died before the trial (started again)")
            record["as_expected"] = not record["flags"] and record["status"] == "ok"
            if capture is not None:
                capture.finish(keep=not record["as_expected"])
                if capture.kept:
                    record["capture"] = str(capture.path.relative_to(self.run_dir))
            self.probes_file.write(json.dumps({"set": ts.name, "trial": n, "t_fault": t_fault,
                                               "probes": [[p.sent, p.done, p.ok] for p in probes]}) + "\n")
            return record
        finally:
            # Whatever went wrong above, nothing of this trial outlives it: the fault is
            # undone, the probes stop, the capture ends (kept: the trial went wrong).
            if ctx.undo:
                try:
                    ctx.restore()
                except Exception:
                    pass
            probe.stop()
            if capture is not None and not capture.done:
                capture.finish(keep=True)


    # -- keepalived baseline ------------------------------------------------------------------------

    def keepalived_set(self, dep: Deployment, ts: TrialSet, bar, point: dict | None = None) -> list[dict]:
        rt = ts.params.get("rt_priority")
        hosts = start_keepalived_pair(dep, ts.advert_ms, rt, planned=ts.fault == PLANNED_SWITCHOVER)
        records = []

        for n in range(ts.trials):
            master = next(iter(wait_until(lambda: keepalived_holders(dep, hosts), 15)), None)
            record = {"set": ts.name, "target": "keepalived", "fault": ts.fault, "trial": n, "primary": master}
            if point:
                record["point"] = point
            if master is None:
                record.update(status="invalid", error="no keepalived master")
                self._write(record, bar)
                records.append(record)
                continue
            backup = next(h for h in hosts if h != master)
            url, headers, expect = self._probe_for("keepalived", w={})
            probe = Prober(dep, url, headers, self.exp.probe_interval_ms / 1000,
                           self.exp.probe_timeout_ms / 1000, expect).start()
            try:
                self._keepalived_trial(dep, ts, n, master, backup, probe, record)
            except Exception as exc:  # recorded, never silently dropped
                record.update(status="error", error=repr(exc))
            finally:
                probe.stop()
            records.append(record)
            self._write(record, bar)
        stop_keepalived_pair(dep, hosts)
        return records

    def _write(self, record: dict, bar) -> None:
        self.trials_file.write(json.dumps(record) + "\n")
        self.written.add((record["set"], record["trial"]))
        bar(record["set"])

    def _keepalived_trial(self, dep: Deployment, ts: TrialSet, n: int, master: str, backup: str,
                          probe: Prober, record: dict) -> None:
        psutil.cpu_percent(None)
        time.sleep(0.3)
        wait_until(lambda: sum(p.ok for p in probe.snapshot()) >= 3, 5, 0.01)  # warm-up
        time.sleep(self.rng.uniform(0, ts.advert_ms / 1000))
        t_fault = _mono()
        track = dep.host_dir(master, "keepalived") / "maintenance"
        if ts.fault == PLANNED_SWITCHOVER:
            track.write_text("1\n")  # the master's priority drops below the backup's: it preempts
        else:
            # The service crashes with its keepalived (the daemon and its VRRP child), as
            # eucalab's component does with its HA agent.
            dep.kill(master, "keepalived", group=True)
            dep.kill(master, "http8080")
        # keepalived killed with SIGKILL leaves its VIP behind: the host still answers
        # ARP for it until the backup's gratuitous ARP wins, as in a real crash.
        ok = wait_until(lambda: any(p.ok and p.sent >= t_fault for p in probe.snapshot()) and
                   keepalived_holders(dep, [backup]), 15)
        time.sleep(0.1)
        probes = probe.stop()
        span = outage_span(probes, t_fault)
        out = span[1] - span[0] if span else None
        record.update(status="ok" if ok and out is not None else "no-recovery", t_fault=t_fault,
                      outage_s=out, served_again_s=(span[1] - t_fault) if span else None,
                      new_primary=backup, probes=len(probes),
                      cpu_percent=psutil.cpu_percent(None), load1=os.getloadavg()[0],
                      lost_writes=None, prober=probe.overhead,
                      **{f"probe_{k}": v for k, v in resolution(probes).items()})
        self.probes_file.write(json.dumps({"set": ts.name, "trial": n, "t_fault": t_fault,
                                           "probes": [[p.sent, p.done, p.ok] for p in probes]}) + "\n")
        if ts.fault == PLANNED_SWITCHOVER:
            record["failed_probes"] = sum(1 for p in probes if p.sent >= t_fault and not p.ok)
            # Restore: the master's priority back; it preempts again (outside the measured span).
            track.write_text("0\n")
            wait_until(lambda: keepalived_holders(dep, [master]), 15)
            return
        # Restore: the crashed master's host drops the stale VIP and rejoins as backup.
        dep.process(master, "keepalived").popen.wait(timeout=5)
        dep.process(master, "http8080").popen.wait(timeout=5)
        drop_keepalived_vip(dep, master)
        start_http(dep, master)
        start_keepalived(dep, master, ts.advert_ms, 90, ts.params.get("rt_priority"))

    # -- the whole run ----------------------------------------------------------------------------------

    def run(self) -> Path:
        """Every sweep point (one when there is no sweep) on its own deployment, then the report."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from ..analysis import report
        from ..testbed.preflight import has_netem
        from ..testbed.versions import versions

        exp = self.exp
        points = [(point, e) for point in sweep_points(exp.sweep) for e in exp.at(point).deployments()]
        for _, e in points:  # refuse what this machine cannot do before building anything
            spec = spec_from_dict(e.spec)
            controller = (spec.sdn if e.sdn is None else e.sdn) or spec.ha.takeover == "sdn"
            for ts in e.sets:
                check_available(CATALOGUE[ts.fault], netem=has_netem(), sdn=controller)
        write_json(self.run_dir / "experiment.json", dataclasses.asdict(exp))
        write_json(self.run_dir / "versions.json", versions())
        total = sum(s.trials for _, e in points for s in e.sets)
        load = _LoadRecorder(self.run_dir / "load.jsonl").start()
        t0 = time.monotonic()
        try:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TimeRemainingColumn(),
                          disable=not self.progress) as progress:
                task = progress.add_task("starting the deployment", total=total)
                done = [0]
                tty = progress.console.is_terminal

                def bar(name):
                    progress.update(task, advance=1, description=name)
                    done[0] += 1
                    if not tty and (done[0] % 10 == 0 or done[0] == total):
                        # No terminal (CI, a log file): a plain progress line instead of the bar.
                        elapsed = time.monotonic() - t0
                        eta = elapsed / done[0] * (total - done[0])
                        print(f"eucalab: {done[0]}/{total} trials ({name}), {elapsed:.0f} s elapsed, "
                              f"about {eta:.0f} s left", flush=True)

                for i, (point, e) in enumerate(points):
                    progress.update(task, description="starting the deployment" + (f" ({_point_label(point)})"
                                                                                   if point else ""))
                    sub = self.run_dir / ("deployment" if len(points) == 1 else f"deployment-{i}")
                    self.written = set()
                    try:
                        self._run_point(e, point, sub, progress, task, bar)
                    except Exception as exc:
                        # A point that cannot be set up is recorded, trial by trial, and the
                        # run goes on with the next one.
                        self._record_failed_point(e, point, f"{type(exc).__name__}: {exc}", bar)
        finally:
            load.stop()
            self.trials_file.close()
            self.probes_file.close()
            write_json(self.run_dir / "timing.json", {"wall_s": time.monotonic() - t0, "trials": total,
                                                      "trials_per_minute": total / (time.monotonic() - t0) * 60})
            report.build(self.run_dir)  # whatever happened, the raw data gets its report
        return self.run_dir

    def _record_paths(self, dep: Deployment, point: dict) -> None:
        """The network as users and arbitrators see it before the first fault (paths.jsonl)."""
        from ..testbed.linkcheck import measure_paths

        with open(self.run_dir / "paths.jsonl", "a") as f:
            links = dataclasses.asdict(dep.spec.links)
            for record in measure_paths(dep):
                f.write(json.dumps({**record, "links": links, **({"point": point} if point else {})}) + "\n")

    def _record_failed_point(self, exp: "Experiment", point: dict, error: str, bar) -> None:
        for ts in exp.sets:
            for n in range(ts.trials):
                if (ts.name, n) in self.written:  # trials already run at this point stand
                    continue
                record = {"set": ts.name, "target": ts.target, "fault": ts.fault, "trial": n, "status": "error",
                          "error": f"deployment: {error}"}
                if point:
                    record["point"] = point
                self._write(record, bar)

    def _run_point(self, exp: "Experiment", point: dict, run_dir: Path, progress, task, bar) -> None:
        saved, self.exp = self.exp, exp  # trials read the point's timing parameters
        try:
            with Deployment(spec_from_dict(exp.spec), run_dir=run_dir, sdn=exp.sdn) as dep:
                if self.observer is not None:
                    self.observer.starting(dep)
                t0 = time.monotonic()
                dep.start_services()
                if self.observer is not None:
                    self.observer.services_up(dep, time.monotonic() - t0)
                w = self._prepare(dep)
                if self.observer is not None:
                    self.observer.prepared(dep)
                self._record_paths(dep, point)
                for pair in dep.plan.pairs:
                    wait_until(lambda p=pair: [m for m in p.members if dep.member_state(m) == "ENABLED"], 10)
                # What one packet's trip through a bridge costs depends on it (userspace datapath).
                ports = datapath_ports(dep.network.datapath)
                for ts in [s for s in exp.sets if s.target != "keepalived"]:
                    for n in range(ts.trials):
                        progress.update(task, description=ts.name)
                        try:
                            record = self.trial(dep, ts, n, w)
                        except Exception as exc:  # recorded, never silently dropped
                            record = {"set": ts.name, "target": ts.target, "trial": n, "status": "error",
                                      "error": repr(exc)}
                        if point:
                            record["point"] = point
                        record["datapath_ports"] = ports
                        record["datapath_priority"] = dep.datapath_priority
                        self._write(record, bar)
                for ts in [s for s in exp.sets if s.target == "keepalived"]:
                    self.keepalived_set(dep, ts, bar, point)
        finally:
            self.exp = saved


def sweep_points(sweep: dict) -> list[dict]:
    """Every combination of the swept values ([{}] without a sweep), in a stable order."""
    import itertools

    if not sweep:
        return [{}]
    keys = list(sweep)
    for k in keys:
        if not isinstance(sweep[k], list) or not sweep[k]:
            raise ValueError(f"sweep.{k} must be a non-empty list of values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def _point_label(point: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


class _LoadRecorder:
    """The machine's CPU load during the run, every half second (a measurement's context)."""

    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        psutil.cpu_percent(None)
        while not self._stop.wait(0.5):
            self.f.write(json.dumps({"t_mono": _mono(), "cpu_percent": psutil.cpu_percent(None),
                                     "load1": os.getloadavg()[0]}) + "\n")

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join(timeout=2)
        self.f.close()


def run_definition(path: str | Path | None = None, trials: int | None = None) -> Path:
    exp = Experiment.load(path or DEFINITIONS / "default.yaml")
    if trials is not None:
        for s in exp.sets:
            s.trials = min(s.trials, trials)
    return Runner(exp).run()
