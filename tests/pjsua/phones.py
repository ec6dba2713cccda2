"""Two PJSIP phones (PJSUA2, PyPI `pjsua2-python`) against a sipmesh mesh.

Usage: phones.py TRANSPORT ALICE_NODE BOB_NODE
  TRANSPORT  udp or tcp
  *_NODE     host:port of the node each phone registers with

Alice (password alice-pw) registers at ALICE_NODE and Bob (bob-pw) at BOB_NODE, each on its own
transport, as two phones would. Then:
  1. Alice calls Bob; Bob rings (180) and answers; both sides confirmed.
  2. Alice puts the call on hold (re-INVITE, sendonly) and takes it off again; Bob sees each.
  3. Bob hangs up; Alice sees the BYE.
  4. Alice calls again; Bob only rings; Alice cancels: both sides end with 487.
Prints one line per step; exits non-zero (with the reason) on the first failure.
"""

import os
import sys
import time

import pjsua2 as pj

TIMEOUT = 20.0


class Call(pj.Call):
    def __init__(self, acc, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.state = None
        self.last_code = 0
        self.media_status = None

    def onCallState(self, prm):
        info = self.getInfo()
        self.state = info.state
        self.last_code = info.lastStatusCode

    def onCallMediaState(self, prm):
        info = self.getInfo()
        for m in info.media:
            if m.type == pj.PJMEDIA_TYPE_AUDIO:
                self.media_status = m.status


class Account(pj.Account):
    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.incoming = []
        self.reg_code = 0

    def onRegState(self, prm):
        self.reg_code = prm.code

    def onIncomingCall(self, prm):
        call = Call(self, prm.callId)
        op = pj.CallOpParam()
        op.statusCode = 180
        call.answer(op)
        if self.answer:
            op = pj.CallOpParam()
            op.statusCode = 200
            call.answer(op)
        self.incoming.append(call)


def main():
    transport, alice_node, bob_node = sys.argv[1:4]
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 3
    cfg.logConfig.consoleLevel = 2
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    kind = pj.PJSIP_TRANSPORT_TCP if transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
    transports = []
    for _ in range(2):
        tcfg = pj.TransportConfig()
        tcfg.port = 0
        tcfg.boundAddress = "127.0.0.1"
        transports.append(ep.transportCreate(kind, tcfg))
    ep.libStart()

    def pump(cond, what):
        deadline = time.time() + TIMEOUT
        while not cond():
            if time.time() > deadline:
                raise SystemExit(f"FAIL: {what}")
            ep.libHandleEvents(20)

    def account(user, node, tid, answer):
        acc = Account(answer)
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{user}@{node}"
        acfg.regConfig.registrarUri = f"sip:{node};transport={transport}"
        acfg.sipConfig.transportId = tid
        acfg.sipConfig.proxies.append(f"sip:{node};transport={transport};lr")
        cred = pj.AuthCredInfo("digest", "*", user, 0, f"{user}-pw")
        acfg.sipConfig.authCreds.append(cred)
        acfg.natConfig.sipOutboundUse = 0
        acfg.mediaConfig.transportConfig.port = 0
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        acc.create(acfg)
        return acc

    alice = account("alice", alice_node, transports[0], False)
    bob = account("bob", bob_node, transports[1], True)
    pump(lambda: alice.reg_code == 200 and bob.reg_code == 200, "both register (200)")
    print(f"registered over {transport}: alice at {alice_node}, bob at {bob_node}", flush=True)

    # 1. A call across the mesh, answered.
    call = Call(alice)
    call.makeCall(f"sip:bob@{alice_node}", pj.CallOpParam(True))
    pump(lambda: call.state == pj.PJSIP_INV_STATE_CONFIRMED, "alice's call confirmed")
    pump(lambda: bob.incoming and bob.incoming[-1].state == pj.PJSIP_INV_STATE_CONFIRMED,
         "bob's call confirmed")
    theirs = bob.incoming[-1]
    print("call up", flush=True)

    # 2. Hold and unhold: re-INVITEs through the mesh, in the dialog's route set.
    call.setHold(pj.CallOpParam(True))
    pump(lambda: call.media_status == pj.PJSUA_CALL_MEDIA_LOCAL_HOLD, "alice on hold")
    pump(lambda: theirs.media_status == pj.PJSUA_CALL_MEDIA_REMOTE_HOLD, "bob sees the hold")
    print("held", flush=True)
    # The hold's ACK travels apart from the next re-INVITE: let the dialog settle first, as a
    # person would, and retry if the callee still answered 491/500 (RFC 3261 §14.1).
    settle = time.time() + 0.5
    pump(lambda: time.time() > settle, "a pause")
    for attempt in range(3):
        op = pj.CallOpParam(True)
        op.opt.flag = pj.PJSUA_CALL_UNHOLD
        call.reinvite(op)
        deadline = time.time() + 5
        pump(lambda: call.media_status == pj.PJSUA_CALL_MEDIA_ACTIVE or time.time() > deadline,
             "alice off hold")
        if call.media_status == pj.PJSUA_CALL_MEDIA_ACTIVE:
            break
        print(f"unhold attempt {attempt + 1} answered {call.getInfo().lastStatusCode}", flush=True)
    pump(lambda: call.media_status == pj.PJSUA_CALL_MEDIA_ACTIVE, "alice off hold")
    pump(lambda: theirs.media_status == pj.PJSUA_CALL_MEDIA_ACTIVE, "bob sees the unhold")
    print("unheld", flush=True)

    # 3. The callee hangs up.
    theirs.hangup(pj.CallOpParam(True))
    pump(lambda: call.state == pj.PJSIP_INV_STATE_DISCONNECTED, "alice gets the BYE")
    print("hung up by the callee", flush=True)

    # 4. CANCEL while ringing.
    bob.answer = False
    call = Call(alice)
    call.makeCall(f"sip:bob@{alice_node}", pj.CallOpParam(True))
    pump(lambda: call.state == pj.PJSIP_INV_STATE_EARLY, "alice hears ringing")
    pump(lambda: len(bob.incoming) == 2 and bob.incoming[-1].state == pj.PJSIP_INV_STATE_EARLY,
         "bob rings")
    call.hangup(pj.CallOpParam(True))
    pump(lambda: bob.incoming[-1].state == pj.PJSIP_INV_STATE_DISCONNECTED,
         "the CANCEL reaches bob")
    pump(lambda: call.state == pj.PJSIP_INV_STATE_DISCONNECTED, "alice's call ends")
    if bob.incoming[-1].last_code != 487 or call.last_code != 487:
        raise SystemExit(
            f"FAIL: cancelled call ended with {bob.incoming[-1].last_code} at bob, "
            f"{call.last_code} at alice (want 487)")
    print("cancelled while ringing: 487 on both sides", flush=True)

    # Unregister, then leave without running PJSUA2's destructors after the library is gone
    # (Python would collect the Call objects in an order PJSUA asserts on).
    for acc in (alice, bob):
        acc.reg_code = 0
        acc.setRegistration(False)
    pump(lambda: alice.reg_code == 200 and bob.reg_code == 200, "both unregister")
    print("OK", flush=True)
    os._exit(0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        # Leave without PJSUA2's destructors (they assert once the library is half gone).
        print(e, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
