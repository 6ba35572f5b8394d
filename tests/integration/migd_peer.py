"""A client of migd's peer protocol for the tests (daemon.proto PeerMsg in
u32 little-endian length frames) inside TLS 1.3 as daemon/migd_tls.c
speaks it: with the pre-shared key through tls_psk_pipe (tests/integration/
tls_psk_pipe.c), as Python's ssl has no PSK; with certificates through
Python's ssl. Protobuf is encoded by hand: the few messages here are flat,
and the tests need nothing installed."""
import os
import select
import socket
import ssl
import struct
import subprocess
import time

# PeerMsg's oneof fields (1-3 were the HMAC exchange TLS replaced)
RESERVE, COMMIT, RELEASE, REPLY = range(4, 8)
IDENTITY = "migd-peer"


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


class _Frames:
    """PeerMsg frames over a byte stream: _write(bytes) and
    _read(secs) -> bytes, None on timeout, b"" at EOF."""

    buf = b""

    def send_raw(self, body):
        self._write(struct.pack("<I", len(body)) + body)

    def send(self, case, fields):
        self.send_raw(enc([(case, enc(fields))]))

    def recv(self, secs=20):
        """(case, {field: value}) of the next PeerMsg; None at EOF."""
        end = time.time() + secs
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack("<I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    (case, inner), = dec(body).items()
                    return case, dec(inner)
            b = self._read(max(0.0, end - time.time()))
            if b is None:
                raise TimeoutError("no message from migd in %d s" % secs)
            if not b:
                return None
            self.buf += b

    def call(self, case, fields):
        """Send a request; (ok, message, reply fields) of its Reply."""
        self.send(case, fields)
        r = self.recv()
        assert r is not None, "migd closed the connection"
        rc, rep = r
        assert rc == REPLY, rc
        return bool(rep.get(1, 0)), rep.get(2, b"").decode(), rep


class Peer(_Frames):
    """A TLS connection to migd's peer port (PIPE: the tls_psk_pipe
    binary; KEYFILE: the pre-shared key, read as migd reads it)."""

    def __init__(self, pipe, port, keyfile, host="127.0.0.1",
                 identity=IDENTITY):
        self.p = subprocess.Popen([pipe, host, str(port), identity, keyfile],
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, bufsize=0)

    def _write(self, data):
        self.p.stdin.write(data)

    def _read(self, secs):
        r, _, _ = select.select([self.p.stdout], [], [], secs)
        return os.read(self.p.stdout.fileno(), 65536) if r else None

    def refused(self, secs=10):
        """The handshake failed: (True, the client's reason) once
        tls_psk_pipe ended with status 3 within secs."""
        try:
            rc = self.p.wait(secs)
        except subprocess.TimeoutExpired:
            return False, "still connected"
        return rc == 3, self.p.stderr.read().decode(errors="replace")

    def close(self):
        self.p.stdin.close()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def x509_context(ca, cert=None, key=None, server=False):
    """TLS 1.3 only, the peer checked against CA; our own certificate if
    given (a client without one is what migd must refuse)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server
                         else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    if server:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class PeerX509(_Frames):
    """A TLS connection to migd's peer port with certificates (ctx: an
    x509_context). The handshake is done here; in TLS 1.3 the server
    checks the client's certificate after the client thinks it is done,
    so a refusal can show at the first read (refused())."""

    def __init__(self, ctx, port, host="127.0.0.1", name=None, secs=10):
        raw = socket.create_connection((host, port), timeout=secs)
        self.s = ctx.wrap_socket(raw, server_hostname=name or host)

    def _write(self, data):
        self.s.sendall(data)

    def _read(self, secs):
        self.s.settimeout(max(secs, 0.01))
        try:
            return self.s.recv(65536)
        except socket.timeout:
            return None

    def refused(self, secs=10):
        """(True, why) if migd ends the connection (an alert or EOF)
        without a message within secs."""
        try:
            b = self._read(secs)
        except (ssl.SSLError, OSError) as e:
            return True, str(e)
        if b is None:
            return False, "still connected"
        return not b, "closed" if not b else "data: %r" % b[:40]

    def close(self):
        self.s.close()


def raw_closed(port, data, secs=10, host="127.0.0.1"):
    """Send DATA in the clear (no TLS) to migd's peer port: True if migd
    closes the connection within secs."""
    s = socket.create_connection((host, port), timeout=secs)
    s.sendall(data)
    try:
        while s.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.close()
