"""A client of migd's peer protocol for the tests (daemon.proto PeerMsg in
u32 little-endian length frames, HMAC-SHA256 proofs over both nonces as
daemon/migd_peer.c makes them). Protobuf is encoded by hand: the few
messages here are flat, and the tests need nothing installed."""
import hashlib
import hmac
import os
import socket
import struct

CLIENT_TAG = b"migd-auth-v1 client"
SERVER_TAG = b"migd-auth-v1 server"
# PeerMsg's oneof fields
CHALLENGE, AUTH, AUTH_RESULT, RESERVE, COMMIT, RELEASE, REPLY = range(1, 8)


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def enc(fields):
    """fields: [(number, value)]; bytes/str length-delimited, int varint."""
    out = b""
    for num, v in fields:
        if isinstance(v, str):
            v = v.encode()
        if isinstance(v, (bytes, bytearray)):
            out += varint(num << 3 | 2) + varint(len(v)) + bytes(v)
        else:
            out += varint(num << 3) + varint(int(v))
    return out


def dec(buf):
    """{number: value} of a flat message (the last one of each number)."""
    f, i = {}, 0
    while i < len(buf):
        key, i = _varint_at(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            f[num], i = _varint_at(buf, i)
        elif wt == 2:
            n, i = _varint_at(buf, i)
            f[num], i = bytes(buf[i:i + n]), i + n
        else:
            raise ValueError("wire type %d" % wt)
    return f


def _varint_at(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


class Peer:
    def __init__(self, port, host="127.0.0.1", timeout=20):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send_raw(self, body):
        self.s.sendall(struct.pack("<I", len(body)) + body)

    def send(self, case, fields):
        self.send_raw(enc([(case, enc(fields))]))

    def recv(self):
        """(case, {field: value}) of the next PeerMsg; None at EOF."""
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack("<I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    (case, inner), = dec(body).items()
                    return case, dec(inner)
            b = self.s.recv(65536)
            if not b:
                return None
            self.buf += b

    def auth(self, psk, replay=None):
        """Answer the challenge; replay: an Auth body to send as it is.
        Returns (ok, message, the Auth body sent); raises if migd's own
        proof is wrong."""
        case, ch = self.recv()
        assert case == CHALLENGE, case
        sn = ch[2]
        cn = os.urandom(32)
        if replay is None:
            mac = hmac.new(psk, CLIENT_TAG + sn + cn, hashlib.sha256).digest()
            body = enc([(1, cn), (2, mac)])
        else:
            body = replay
            cn = dec(body)[1]
        self.send_raw(enc([(AUTH, body)]))
        r = self.recv()
        if r is None:
            return False, "closed", body
        case, ar = r
        assert case == AUTH_RESULT, case
        ok = bool(ar.get(1, 0))
        if ok:
            want = hmac.new(psk, SERVER_TAG + cn + sn, hashlib.sha256).digest()
            assert ar.get(3) == want, "migd's proof is wrong"
        return ok, ar.get(2, b"").decode(), body

    def call(self, case, fields):
        """Send a request; (ok, message, reply fields) of its Reply."""
        self.send(case, fields)
        r = self.recv()
        assert r is not None, "migd closed the connection"
        rc, rep = r
        assert rc == REPLY, rc
        return bool(rep.get(1, 0)), rep.get(2, b"").decode(), rep

    def closed(self, secs=5):
        """True if migd closes the connection within secs."""
        self.s.settimeout(secs)
        try:
            while self.s.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
