"""A minimal RFB (VNC) client for tests: enough of the protocol to check which password a
VNC server accepts (RFC 6143 sections 7.1.1-7.1.3 and 7.2.2)."""

import socket

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # python3-cryptography


def rfb_vnc_auth(host, port, password, timeout=10):
    """A minimal RFB 3.8 client up to the SecurityResult: version handshake, security type 2
    (VNC authentication), the DES response to the server's 16-byte challenge. Returns
    (ok, reason). The VNC DES key is the password padded to 8 bytes with each byte's bits
    reversed (RFB's historical quirk); single DES is TripleDES with one 8-byte key."""
    def recv(sock, n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise AssertionError(f"VNC server closed the connection after {data!r}")
            data += chunk
        return data

    with socket.create_connection((host, port), timeout=timeout) as sock:
        version = recv(sock, 12)
        if not version.startswith(b"RFB 003."):
            raise AssertionError(f"not an RFB server: {version!r}")
        sock.sendall(b"RFB 003.008\n")
        count = recv(sock, 1)[0]
        if count == 0:
            reason = recv(sock, int.from_bytes(recv(sock, 4), "big"))
            raise AssertionError(f"server refused before authentication: {reason!r}")
        types = recv(sock, count)
        if 2 not in types:
            raise AssertionError(f"server does not offer VNC authentication (security types {list(types)})")
        sock.sendall(b"\x02")
        challenge = recv(sock, 16)
        key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
        enc = Cipher(algorithms.TripleDES(key), modes.ECB()).encryptor()
        sock.sendall(enc.update(challenge) + enc.finalize())
        result = int.from_bytes(recv(sock, 4), "big")
        if result == 0:
            return True, ""
        try:
            reason = recv(sock, int.from_bytes(recv(sock, 4), "big")).decode(errors="replace")
        except (AssertionError, OSError):
            reason = ""
        return False, reason
