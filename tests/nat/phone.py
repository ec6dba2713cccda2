"""A minimal UDP phone for tests/nat.rs, run inside a network namespace behind a NAT.

usage: phone.py SERVER_IP SERVER_PORT USER PASSWORD MY_IP

It registers with digest (MD5, qop=auth) from 0.0.0.0:5060 with the Contact it sees
(sip:USER@MY_IP:5060, a private address), then answers one call: 180 and 200 to the INVITE,
waits for the ACK and the BYE (200). Prints one line per step; exits 0 after the BYE, 1 on a
timeout. Standard library only.
"""
import hashlib
import random
import re
import socket
import sys

server_ip, server_port, user, password, my_ip = sys.argv[1:6]
server = (server_ip, int(server_port))
realm_domain = server_ip
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 5060))
sock.settimeout(20)
contact = f"<sip:{user}@{my_ip}:5060>"
call_id = f"{random.getrandbits(64):x}@{my_ip}"
tag = f"{random.getrandbits(32):x}"


def md5(s):
    return hashlib.md5(s.encode()).hexdigest()


def register(cseq, auth=""):
    branch = f"z9hG4bK{random.getrandbits(48):x}"
    msg = (
        f"REGISTER sip:{server_ip}:{server_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {my_ip}:5060;branch={branch};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{realm_domain}>;tag={tag}\r\n"
        f"To: <sip:{user}@{realm_domain}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: {contact};expires=300\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    sock.sendto(msg.encode(), server)
    while True:
        data, _ = sock.recvfrom(65535)
        text = data.decode(errors="replace")
        if text.startswith("SIP/2.0 ") and f"{cseq} REGISTER" in text:
            return text


def header(text, name):
    m = re.search(rf"^{name}:\s*(.*?)\r$", text, re.M | re.I)
    return m.group(1) if m else None


def headers(text, name):
    return re.findall(rf"^{name}:\s*(.*?)\r$", text, re.M | re.I)


first = register(1)
challenge = header(first, "WWW-Authenticate")
realm = re.search(r'realm="([^"]*)"', challenge).group(1)
nonce = re.search(r'nonce="([^"]*)"', challenge).group(1)
uri = f"sip:{server_ip}:{server_port}"
cnonce, nc = f"{random.getrandbits(32):x}", "00000001"
ha1 = md5(f"{user}:{realm}:{password}")
ha2 = md5(f"REGISTER:{uri}")
response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
auth = (
    f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
    f'response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"\r\n'
)
ok = register(2, auth)
print("REGISTERED" if ok.startswith("SIP/2.0 200") else "REGISTER FAILED " + ok.splitlines()[0], flush=True)

to_tag = f"{random.getrandbits(32):x}"


def answer(req, code, reason, source):
    lines = [f"SIP/2.0 {code} {reason}"]
    for v in headers(req, "Via"):
        lines.append(f"Via: {v}")
    for rr in headers(req, "Record-Route"):
        lines.append(f"Record-Route: {rr}")
    to = header(req, "To")
    if ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [
        f"From: {header(req, 'From')}",
        f"To: {to}",
        f"Call-ID: {header(req, 'Call-ID')}",
        f"CSeq: {header(req, 'CSeq')}",
        f"Contact: {contact}",
        "Content-Length: 0",
        "",
        "",
    ]
    sock.sendto("\r\n".join(lines).encode(), source)


try:
    while True:
        data, source = sock.recvfrom(65535)
        text = data.decode(errors="replace")
        method = text.split(" ", 1)[0]
        if method == "INVITE":
            print("INVITE " + text.splitlines()[0], flush=True)
            answer(text, 180, "Ringing", source)
            answer(text, 200, "OK", source)
        elif method == "ACK":
            print("ACK", flush=True)
        elif method == "BYE":
            print("BYE", flush=True)
            answer(text, 200, "OK", source)
            sys.exit(0)
except socket.timeout:
    print("TIMEOUT", flush=True)
    sys.exit(1)
