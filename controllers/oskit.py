"""The one module that imports os-ken (after Faucet's valve_of): OpenFlow 1.3 plumbing.

``Fabric`` is the os-ken app. It keeps no forwarding logic of its own: it asks
``flows.compute_flows`` what every switch should hold and makes the switches hold
exactly that, by cookie:

* a switch that connects (first start, or a restarted controller) is asked for its
  flows; only the difference to the wanted set is sent (adds, then deletes by
  cookie), so flows that stay are never touched and traffic keeps running;
* an accepted intent (or standby report) recomputes the wanted set and sends each
  connected switch its difference, followed by a barrier; the caller waits for the
  barriers, so when ``apply`` returns the flows are in the switches.

os-ken 4.x's native hub runs every app and every switch connection in its own
thread; all state here is guarded by one lock.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from os_ken import cfg as os_ken_cfg
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.lib import hub
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from . import flows as fl
from .flow import OFPVID_PRESENT, Flow
from .intent import IntentStore, StandbyStore
from .topology import Topology
from .vips import VipStore

log = logging.getLogger(__name__)

ALL_COOKIES = 0xFFFF_FFFF_FFFF_FFFF
# Widths of the fields a ("move", src, dst) action copies whole.
FIELD_BITS = {"eth_src": 48, "eth_dst": 48, "arp_sha": 48, "arp_tha": 48, "arp_spa": 32, "arp_tpa": 32}

# os-ken instantiates apps itself; the launcher hands over what the app needs here.
_CONTEXT: dict = {}


def _match(parser, flow: Flow):
    return parser.OFPMatch(**{k: v for k, v in flow.match})


def _instructions(ofp, parser, flow: Flow) -> list:
    actions, goto = [], None
    for a in flow.actions:
        if a[0] == "output":
            actions.append(parser.OFPActionOutput(ofp.OFPP_IN_PORT if a[1] == "in_port" else a[1], 0))
        elif a[0] == "set_field":
            actions.append(parser.OFPActionSetField(**{a[1]: a[2]}))
        elif a[0] == "move":
            actions.append(parser.NXActionRegMove(src_field=a[1], dst_field=a[2], n_bits=FIELD_BITS[a[1]]))
        elif a[0] == "push_vlan":
            actions.append(parser.OFPActionPushVlan(0x8100))
            actions.append(parser.OFPActionSetField(vlan_vid=OFPVID_PRESENT | a[1]))
        elif a[0] == "pop_vlan":
            actions.append(parser.OFPActionPopVlan())
        elif a[0] == "normal":
            actions.append(parser.OFPActionOutput(ofp.OFPP_NORMAL, 0))
        elif a[0] == "goto":
            goto = a[1]
        else:
            raise ValueError(f"unknown action {a!r}")
    inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
    if goto is not None:
        inst.append(parser.OFPInstructionGotoTable(goto))
    return inst


def flow_add(dp, flow: Flow):
    """The FlowMod that installs ``flow`` (an identical flow already there is left as it is)."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    return parser.OFPFlowMod(dp, cookie=flow.cookie, table_id=flow.table, command=ofp.OFPFC_ADD,
                             priority=flow.priority, match=_match(parser, flow),
                             instructions=_instructions(ofp, parser, flow))


def flow_delete(dp, cookie: int):
    """Delete the one flow carrying ``cookie`` (cookies are unique per flow)."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    return parser.OFPFlowMod(dp, cookie=cookie, cookie_mask=ALL_COOKIES, table_id=ofp.OFPTT_ALL,
                             command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                             match=parser.OFPMatch())


def _guarded(handler):
    """Log a handler's exception instead of raising it: on the native hub os-ken treats
    any exception as TaskExit and silently ends the app's event loop."""

    @functools.wraps(handler)
    def wrapper(self, ev):
        try:
            handler(self, ev)
        except Exception:  # noqa: BLE001 (the event loop must survive)
            log.exception("%s failed on %s", handler.__name__, type(ev).__name__)
            self.eventlog.emit("controller.error", handler=handler.__name__, event=type(ev).__name__)

    return wrapper


class Fabric(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.topo: Topology = _CONTEXT["topology"]
        self.store: IntentStore = _CONTEXT["store"]
        self.vips: VipStore = _CONTEXT["vips"]
        self.standbys: StandbyStore = _CONTEXT["standbys"]
        self.eventlog = _CONTEXT["events"]  # self.events is os-ken's own queue
        self.barrier_timeout = _CONTEXT.get("barrier_timeout", 2.0)
        self.names = self.topo.switch_by_dpid()
        self.lock = threading.RLock()
        self.datapaths: dict[str, object] = {}
        self.installed: dict[str, set[int]] = {}  # switch -> cookies it holds
        self.synced: set[str] = set()
        self._stats: dict[str, list] = {}
        self._barriers: dict[tuple[str, int], threading.Event] = {}
        self.wanted = self._compute()
        self._ready = False
        self._t0 = time.monotonic()

    # -- switch connections --------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    @_guarded
    def _switch_state(self, ev):
        """A switch became ready (os-ken has its features: ask for its flows) or went away."""
        dp = ev.datapath
        name = self.names.get(dp.id) if dp.id is not None else None
        if ev.state == DEAD_DISPATCHER:
            with self.lock:
                if name is not None and self.datapaths.get(name) is dp:
                    del self.datapaths[name]
                    self.synced.discard(name)
            if name:
                self.eventlog.emit("switch.disconnect", switch=name)
            return
        if name is None:
            log.warning("unknown datapath %s: ignored", dp.id)
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        with self.lock:
            self.datapaths[name] = dp
            self.synced.discard(name)
            self._stats[name] = []
            dp.send_msg(parser.OFPFlowStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                                   0, 0, parser.OFPMatch()))
        self.eventlog.emit("switch.connect", switch=name, dpid=f"{dp.id:016x}")

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    @_guarded
    def _flow_stats(self, ev):
        msg = ev.msg
        dp = msg.datapath
        name = self.names.get(dp.id)
        if name is None:
            return
        with self.lock:
            self._stats.setdefault(name, []).extend(msg.body)
            if msg.flags & dp.ofproto.OFPMPF_REPLY_MORE:
                return
            present = {s.cookie for s in self._stats.pop(name)}
            self.installed[name] = present
            added, removed, _ = self._push(name)
            self.synced.add(name)
            ready = not self._ready and self.synced >= set(self.topo.switches)
            if ready:
                self._ready = True
        self.eventlog.emit("switch.synced", switch=name, kept=len(present) - removed, added=added,
                         removed=removed)
        if ready:
            self.eventlog.emit("controller.ready", switches=len(self.synced),
                             seconds=round(time.monotonic() - self._t0, 3))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    @_guarded
    def _switch_error(self, ev):
        """A switch refused something we sent: always a bug here, so it is an event."""
        msg = ev.msg
        name = self.names.get(msg.datapath.id)
        log.error("switch %s: OpenFlow error type %s code %s", name, msg.type, msg.code)
        self.eventlog.emit("switch.error", switch=name, type=msg.type, code=msg.code, xid=msg.xid)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    @_guarded
    def _barrier_reply(self, ev):
        name = self.names.get(ev.msg.datapath.id)
        with self.lock:
            done = self._barriers.pop((name, ev.msg.xid), None)
        if done is not None:
            done.set()

    # -- pushing flows ---------------------------------------------------------------------

    def _push(self, name: str, barrier: bool = False) -> tuple[int, int, threading.Event | None]:
        """Send one switch the difference between what it holds and what it should (lock held);
        with ``barrier``, a barrier after it when anything changed, and the event its reply sets.

        One buffer per switch: os-ken queues each message for the switch's send thread
        (16 at most, then the sender blocks), and a takeover's 20 flow mods sent one by one
        took 3.2 ms p50 of thread hand-offs on a loaded host. OpenFlow is a byte stream, so
        the messages go in one write, in order.
        """
        dp = self.datapaths[name]
        wanted = self.wanted.get(name, [])
        have = self.installed.setdefault(name, set())
        want_cookies = {f.cookie for f in wanted}
        adds = [f for f in wanted if f.cookie not in have]
        deletes = sorted(have - want_cookies)
        # Adds first: a changed flow (same match and priority) is replaced in place,
        # so the delete of its old cookie finds nothing and no packet sees a gap.
        msgs = [flow_add(dp, f) for f in adds] + [flow_delete(dp, cookie) for cookie in deletes]
        done = None
        if barrier and msgs:
            msgs.append(dp.ofproto_parser.OFPBarrierRequest(dp))
        for msg in msgs:
            dp.set_xid(msg)
            msg.serialize()
        if barrier and msgs:
            done = threading.Event()
            self._barriers[(name, msgs[-1].xid)] = done
        if msgs:
            dp.send(b"".join(m.buf for m in msgs))
        self.installed[name] = want_cookies | (have - set(deletes))
        return len(adds), len(deletes), done

    def _compute(self) -> dict[str, list[Flow]]:
        return fl.compute_flows(self.topo, self.store.snapshot(), self.vips.snapshot(), self.standbys.snapshot())

    def _push_all(self, cluster: int | None = None) -> tuple[int, int, list[threading.Event]]:
        """Recompute the wanted flows and send every synced switch its difference (lock held).

        With ``cluster``, only that cluster's private network: an intent changes nothing
        else, and a takeover waits on this (the whole deployment took 1.4 ms p50 to
        compute under load)."""
        if cluster is None:
            self.wanted = self._compute()
            names = self.synced
        else:
            part = fl.cluster_flows(self.topo, cluster, self.store.snapshot().get(cluster),
                                    self.standbys.snapshot().get(cluster))
            self.wanted.update(part)
            names = self.synced & set(part)
        added = removed = 0
        waits = []
        for name in sorted(names):
            a, r, done = self._push(name, barrier=True)
            added, removed = added + a, removed + r
            if done is not None:
                waits.append(done)
        return added, removed, waits

    def _bring(self, cluster: int | None, announce: list | None = None, still=lambda: True) -> dict:
        """Send every synced switch its difference (``cluster``'s network, or all with None),
        wait for the barriers, then inject ``announce``'s (switch, in_port, frame) if
        ``still()`` holds then; the result every apply answers with."""
        t0 = time.monotonic()
        with self.lock:
            added, removed, waits = self._push_all(cluster)
        installed = all(w.wait(self.barrier_timeout) for w in waits)
        with self.lock:
            for switch, in_port, frame in (announce or ()) if still() else ():
                dp = self.datapaths.get(switch)
                if dp is not None:
                    ofp, parser = dp.ofproto, dp.ofproto_parser
                    dp.send_msg(parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port,
                                                    actions=[parser.OFPActionOutput(ofp.OFPP_TABLE, 0)],
                                                    data=frame))
        return {"flows_added": added, "flows_removed": removed, "installed": installed,
                "switches_synced": len(self.synced), "seconds": round(time.monotonic() - t0, 4)}

    def apply(self, intent: dict, previous: dict | None) -> dict:
        """Bring every connected switch to the flows of the accepted intents; wait for them."""
        outs = fl.announcements(self.topo, intent, previous)
        # Applies run side by side (controllers/api.py): a newer intent accepted meanwhile
        # announces its own primary, and this one's frames would undo that.
        result = self._bring(intent["cluster"], outs, still=lambda: (
            self.store.snapshot().get(intent["cluster"]) or {}).get("epoch") == intent["epoch"])
        self.eventlog.emit("intent.applied", cluster=intent["cluster"], epoch=intent["epoch"],
                           primary_cc=intent["primary_cc"], announcements=len(outs), **result)
        return result

    def apply_standby(self, cluster: int, standby: dict, staged: bool) -> dict:
        """Bring the cluster's switches to the flows with this standby report; wait for them."""
        result = self._bring(cluster)
        self.eventlog.emit("standby.applied", cluster=cluster, host=standby["host"], epoch=standby["epoch"],
                           staged=staged, **result)
        return result

    def apply_redirect(self, redirect: dict, previous: dict | None) -> dict:
        """Steer a pair's virtual MAC to its new primary on every connected switch; wait for them.

        No announcement: the VIP's MAC does not change, so no neighbour's cache does.
        """
        result = self._bring(None)
        self.eventlog.emit("vip.applied", pair=redirect["pair"], epoch=redirect["epoch"],
                           primary=redirect["primary"], previous=(previous or {}).get("primary"), **result)
        return result

    def flow_count(self) -> dict[str, int]:
        with self.lock:
            return {name: len(f) for name, f in self.wanted.items()}


def _log_thread_deaths() -> None:
    """Make a dying os-ken thread say why: on the native hub HubThread.run swallows every
    Exception (TaskExit is Exception there), so a broken app would just go quiet."""
    if getattr(hub.HubThread, "_eucalab_logged", False):
        return

    def run(thread):
        try:
            threading.Thread.run(thread)
        except Exception:  # noqa: BLE001
            log.exception("os-ken thread %s died", thread.name)

    hub.HubThread.run = run
    hub.HubThread._eucalab_logged = True


def start(topo: Topology, store: IntentStore, vips: VipStore, standbys: StandbyStore, events, host: str,
          port: int) -> Fabric:
    """Start os-ken's OpenFlow server on host:port with the Fabric app; returns the app.

    The app threads are os-ken's (native hub); the caller keeps the main thread for
    signal handling, since run_apps would block it and cannot stop its threads.
    """
    _log_thread_deaths()
    os_ken_cfg.CONF(args=[], project="os_ken", default_config_files=[])
    os_ken_cfg.CONF.set_override("ofp_listen_host", host)
    os_ken_cfg.CONF.set_override("ofp_tcp_listen_port", port)
    _CONTEXT.update(topology=topo, store=store, vips=vips, standbys=standbys, events=events)
    manager = app_manager.AppManager.get_instance()
    manager.load_apps([__name__, "os_ken.controller.ofp_handler"])
    contexts = manager.create_contexts()
    manager.instantiate_apps(**contexts)
    return next(a for a in manager.applications.values() if isinstance(a, Fabric))
