"""The agent with real TLS (a development PKI made by deploy/dev-certs.sh with the openssl
command line): gRPC callers are their client certificates, REST callers their bearer tokens,
and each role may do only what docs/security.md says. Refusals are UNAUTHENTICATED /
PERMISSION_DENIED (401 / 403) and change nothing; plain text is refused unless asked for, and
then only on loopback."""

import hashlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import grpc

from agent_harness import AgentTestCase, all_domain_names, free_port, small_spec, unique_name
from hvagent.v1 import domain_pb2, domain_pb2_grpc, host_pb2, host_pb2_grpc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SecurityTest(AgentTestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = tempfile.mkdtemp(prefix="hvit-pki-")
        subprocess.run([os.path.join(REPO, "deploy", "dev-certs.sh"), cls.pki], check=True, capture_output=True)
        cls.bulk_token = "bulk-" + os.urandom(16).hex()
        cls.bulk_sha = hashlib.sha256(cls.bulk_token.encode()).hexdigest()
        cls.tokens = {}
        with open(os.path.join(cls.pki, "tokens.txt")) as f:
            for line in f:
                role, token, sha = line.split()
                cls.tokens[role] = (token, sha)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.pki, ignore_errors=True)

    @classmethod
    def pem(cls, name):
        return os.path.join(cls.pki, name)

    @classmethod
    def agent_config(cls):
        identities = "".join(f'[[auth.identities]]\nname = "hvagent-{r}"\nrole = "{r}"\n'
                             for r in ("controller", "operator", "monitor"))
        tokens = "".join(f'[[auth.tokens]]\nname = "{r}-token"\nsha256 = "{sha}"\nrole = "{r}"\n'
                         for r, (_, sha) in cls.tokens.items())
        bulk = (f'[[auth.tokens]]\nname = "bulk"\nsha256 = "{cls.bulk_sha}"\nrole = "monitor"\n')
        cls.ws_port = free_port()
        return (f'[console]\nws_listen = "127.0.0.1:{cls.ws_port}"\n'
                f'[tls]\ncert_file = "{cls.pem("server.crt")}"\nkey_file = "{cls.pem("server.key")}"\n'
                f'client_ca_file = "{cls.pem("ca.crt")}"\n[limits]\nrequests_per_second = 0.2\nburst = 30\n'
                f'max_streams_per_caller = 2\n{identities}{tokens}{bulk}')

    @classmethod
    def agent_options(cls):
        return {"plaintext": False, "client_tls": cls.client("controller"), "token": cls.tokens["controller"][0]}

    @classmethod
    def client(cls, name):
        if name is None:
            return (cls.pem("ca.crt"), None, None)
        return (cls.pem("ca.crt"), cls.pem(f"{name}.crt"), cls.pem(f"{name}.key"))

    def stubs(self, name):
        channel = self.agent.grpc_channel(self.client(name))
        self.addCleanup(channel.close)
        return host_pb2_grpc.HostServiceStub(channel), domain_pb2_grpc.DomainServiceStub(channel)

    def grpc_code(self, call):
        try:
            call()
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    # ---- the browser console listener: TLS with the agent's own certificate ----

    def test_web_console_listener_is_tls_with_the_agents_certificate(self):
        # No client certificate: a browser has none; the ticket is the credential.
        ctx = ssl.create_default_context(cafile=self.pem("ca.crt"))

        def get(path, headers=None):  # one request per connection, as the listener answers
            conn = http.client.HTTPSConnection("127.0.0.1", self.ws_port, timeout=10, context=ctx)
            try:
                conn.request("GET", path, headers=headers or {})
                r = conn.getresponse()
                return r.status, r.read()
            finally:
                conn.close()

        status, body = get("/console/some-vm?ticket=x")
        self.assertEqual(status, 200)
        self.assertIn(b"xterm.js", body)
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        self.assertEqual(get("/console/some-vm/ws?ticket=made-up", upgrade)[0], 401)
        # Plain HTTP gets no answer from a TLS listener.
        plain = http.client.HTTPConnection("127.0.0.1", self.ws_port, timeout=10)
        with self.assertRaises((http.client.HTTPException, OSError)):
            plain.request("GET", "/console/some-vm?ticket=x")
            plain.getresponse()
        plain.close()

    # ---- gRPC: identity from the client certificate ----

    def test_grpc_refuses_missing_foreign_and_expired_certificates(self):
        for who, words in [(None, "no valid client certificate"),
                           ("rogue", "unable to get local issuer certificate"),
                           ("expired", "certificate has expired")]:
            with self.subTest(who=who):
                host, _ = self.stubs(who)
                code, details = self.grpc_code(lambda: host.GetHost(host_pb2.GetHostRequest(), timeout=20))
                self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED, details)
                self.assertIn(words, details)

    def test_grpc_roles(self):
        before = all_domain_names()
        name = unique_name("authz")
        create = lambda d: d.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name)), timeout=30)
        cases = [
            ("nobody", lambda h, d: h.GetHost(host_pb2.GetHostRequest()), grpc.StatusCode.PERMISSION_DENIED),
            ("monitor", lambda h, d: h.GetCapacity(host_pb2.GetCapacityRequest()), grpc.StatusCode.OK),
            ("monitor", lambda h, d: d.ListDomains(domain_pb2.ListDomainsRequest()),
             grpc.StatusCode.PERMISSION_DENIED),
            ("operator", lambda h, d: d.ListDomains(domain_pb2.ListDomainsRequest()), grpc.StatusCode.OK),
            ("operator", lambda h, d: create(d), grpc.StatusCode.PERMISSION_DENIED),
            ("monitor", lambda h, d: create(d), grpc.StatusCode.PERMISSION_DENIED),
        ]
        for who, call, want in cases:
            with self.subTest(who=who, want=want):
                host, domains = self.stubs(who)
                code, details = self.grpc_code(lambda: call(host, domains))
                self.assertEqual(code, want, details)
        self.assertEqual(all_domain_names(), before)  # nothing refused changed anything
        _, domains = self.stubs("controller")
        self.assertEqual(self.grpc_code(lambda: create(domains))[0], grpc.StatusCode.OK)
        self.assertIn(name, all_domain_names())
        _, operator = self.stubs("operator")
        code, details = self.grpc_code(lambda: operator.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name)))
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
        self.assertIn("'hvagent-operator' is operator, this needs controller", details)
        domains.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name))
        # Every mutating call and every refusal is in the audit log, with who did it.
        log = self.agent.log_text()
        self.assertRegex(log, r"caller=hvagent-controller role=controller op=hvagent\.v1\.DomainService/CreateDomain "
                              r"result=OK .*" + name)
        self.assertRegex(log, r"caller=hvagent-operator role=operator op=hvagent\.v1\.DomainService/DeleteDomain "
                              r"result=PERMISSION_DENIED")

    # ---- REST: identity from the bearer token ----

    def test_rest_tokens_and_roles(self):
        body = {"spec": {"name": unique_name("rest"), "vcpus": 1, "memory_mib": 64,
                         "firmware": {"type": "TYPE_BIOS"}}}
        before = all_domain_names()
        for token, method, path, want in [
                ("", "GET", "/v1/host", 401),
                ("not-a-token", "GET", "/v1/host", 401),
                (self.tokens["monitor"][1], "GET", "/v1/host", 401),  # the stored hash is not the token
                (self.tokens["monitor"][0], "GET", "/v1/host", 200),
                (self.tokens["monitor"][0], "GET", "/metrics", 200),
                (self.tokens["monitor"][0], "GET", "/v1/domains", 403),
                (self.tokens["operator"][0], "GET", "/v1/domains", 200),
                (self.tokens["operator"][0], "POST", "/v1/domains", 403),
                ("", "GET", "/v1/no-such-thing", 401),
                ("", "GET", "/healthz", 200)]:
            with self.subTest(token=token[:8], method=method, path=path):
                status, _ = self.agent.rest(method, path, body if method == "POST" else None,
                                            token=token, client_tls=self.client(None))
                self.assertEqual(status, want)
        self.assertEqual(all_domain_names(), before)

    def test_rest_is_https_only(self):
        # The TLS port does not speak plain HTTP.
        with socket.create_connection(tuple(self.agent.rest_addr.rsplit(":", 1)), timeout=10) as s:
            s.sendall(b"GET /v1/host HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(10)
            try:
                reply = s.recv(100)
            except (ConnectionResetError, socket.timeout):
                reply = b""
        self.assertFalse(reply.startswith(b"HTTP/1.1 200"))
        # TLS 1.1 is refused.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.pem("ca.crt"))
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with self.assertRaises(ssl.SSLError):
            with socket.create_connection(tuple(self.agent.rest_addr.rsplit(":", 1)), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass

    def test_sighup_reloads_the_rest_certificate_without_dropping_the_listener(self):
        def served_serial():
            ctx = ssl.create_default_context(cafile=self.pem("ca.crt"))
            host, port = self.agent.rest_addr.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    return s.getpeercert()["serialNumber"]
        first = served_serial()
        # A new server certificate from the same CA, then SIGHUP.
        fresh = tempfile.mkdtemp(prefix="hvit-pki2-")
        self.addCleanup(shutil.rmtree, fresh, True)
        for f in ("ca.crt", "ca.key"):
            shutil.copy(self.pem(f), fresh)
        subprocess.run([os.path.join(REPO, "deploy", "dev-certs.sh"), fresh], check=True, capture_output=True)
        for f in ("server.crt", "server.key"):
            shutil.copy(os.path.join(fresh, f), self.pem(f))
        self.agent.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while served_serial() == first and time.time() < deadline:
            time.sleep(0.2)
        self.assertNotEqual(served_serial(), first)
        self.assertIsNone(self.agent.proc.poll())
        status, _ = self.agent.rest("GET", "/v1/host")
        self.assertEqual(status, 200)

    # ---- limits ----

    def test_a_caller_over_its_rate_limit_gets_429_and_others_do_not(self):
        # 30 at once, then one every 5 s: however slow this machine is, 100 requests in a row
        # cross the limit (a fixed count at 5 per second did not, on a loaded machine).
        first = self.agent.rest("GET", "/v1/host", token=self.bulk_token)
        self.assertEqual(first[0], 200)
        for _ in range(100):
            status, body = self.agent.rest("GET", "/v1/host", token=self.bulk_token)
            if status != 200:
                break
        self.assertEqual(status, 429)
        self.assertIn("rate limit: 'token:bulk'", body["message"])
        self.assertEqual(self.agent.rest("GET", "/v1/host", token=self.tokens["monitor"][0])[0], 200)

    def test_a_caller_may_hold_only_so_many_streams(self):
        channel = self.agent.grpc_channel(self.client("monitor"))
        self.addCleanup(channel.close)
        from hvagent.v1 import metrics_pb2, metrics_pb2_grpc
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        streams = [stub.Watch(metrics_pb2.WatchMetricsRequest(interval_seconds=60), timeout=30) for _ in range(2)]
        for s in streams:
            next(s)  # both are open
        with self.assertRaises(grpc.RpcError) as cm:
            next(stub.Watch(metrics_pb2.WatchMetricsRequest(interval_seconds=60), timeout=30))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("stream limit", cm.exception.details())
        for s in streams:
            s.cancel()
        deadline = time.time() + 10
        while True:  # the slots come back once the server sees the cancellations
            try:
                third = stub.Watch(metrics_pb2.WatchMetricsRequest(interval_seconds=60), timeout=30)
                next(third)
                third.cancel()
                break
            except grpc.RpcError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)

    # ---- plain text only when asked for, and only on loopback ----

    def test_plain_text_needs_the_flag_and_loopback(self):
        binary = os.environ["HVAGENTD"]
        r = subprocess.run([binary, "--hypervisor-uri", "test:///default"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("no TLS is configured", r.stderr)
        r = subprocess.run([binary, "--plaintext-loopback", "--hypervisor-uri", "test:///default",
                            "--grpc-listen", f"0.0.0.0:{free_port()}"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("grpc.listen", r.stderr)
        self.assertIn("not a loopback address", r.stderr)
