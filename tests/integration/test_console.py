"""ConsoleService against a real guest: the shared busybox test guest (tests/guest) booted by
the agent under QEMU TCG through real libvirtd; keystrokes go in over the gRPC stream and the
guest's shell echoes them back through libvirt's console stream. One guest serves the class."""

import os
import base64
import pty
import select
import subprocess
import queue
import random
import shutil
import re
import socket
import tempfile
import threading
import time
import unittest
import uuid

import grpc
import http.client
import json
import websocket  # python3-websocket (websocket-client)

from rfb import rfb_vnc_auth
from agent_harness import AgentTestCase, virsh, small_spec, with_security, test_guest, free_port
from hvagent.v1 import console_pb2, console_pb2_grpc, domain_pb2

GUEST_PREFIX = "hvcon-"  # not hvit-: AgentTestCase.tearDown removes those after every test


class ConsoleStream:
    """One Attach stream: keystrokes queued in, output collected by a reader thread."""

    def __init__(self, stub, name, write=False, take_over=False, first=None):
        self.inputs = queue.Queue()
        self.inputs.put(first or console_pb2.ConsoleInput(
            attach=console_pb2.ConsoleAttach(domain_name=name, write=write, take_over=take_over)))
        self.lock = threading.Lock()
        self.output = b""
        self.dropped = 0
        self.error = None
        self.done = threading.Event()
        self.call = stub.Attach(self._requests())
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self):
        while True:
            item = self.inputs.get()
            if item is None:
                return
            yield item

    def _read(self):
        try:
            for out in self.call:
                with self.lock:
                    self.output += out.data
                    self.dropped += out.dropped_bytes
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.done.set()

    def type(self, text):
        self.inputs.put(console_pb2.ConsoleInput(data=text.encode()))

    def text(self):
        with self.lock:
            return self.output.decode(errors="replace")

    def wait_for_line(self, line, timeout=30, retype=None):
        """Waits until `line` is a whole line of output (the guest's echo, not the typed
        command); `retype` is typed again every 3 s meanwhile (a shell still starting)."""
        pattern = re.compile(r"(^|[\r\n])" + re.escape(line) + r"\r?\n")
        deadline = time.time() + timeout
        next_type = 0
        while time.time() < deadline:
            if pattern.search(self.text()):
                return
            if self.done.is_set():
                raise AssertionError(f"stream ended ({self.error}) before {line!r}; output: {self.text()[-2000:]!r}")
            if retype and time.time() >= next_type:
                self.type(retype)
                next_type = time.time() + 3
            time.sleep(0.05)
        raise AssertionError(f"no line {line!r} within {timeout} s; output: {self.text()[-2000:]!r}")

    def wait_end(self, timeout=10):
        if not self.done.wait(timeout):
            raise AssertionError("stream did not end")
        return self.error.code() if self.error else grpc.StatusCode.OK

    def close(self):
        self.inputs.put(None)
        self.call.cancel()
        self.done.wait(5)


class Devtools:
    """A minimal Chrome DevTools protocol client over python3-websocket: one page target,
    commands answered in order, events skipped."""

    def __init__(self, proc, timeout=20):
        # Chromium prints its browser endpoint on stderr; the page target is found through it.
        deadline = time.time() + timeout
        line = b""
        while b"DevTools listening on" not in line:
            if time.time() > deadline or proc.poll() is not None:
                raise AssertionError(f"chromium did not start its DevTools endpoint: {line!r}")
            line = proc.stderr.readline()
        port = int(re.search(rb"ws://[^:]+:(\d+)/", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/json/list")
        pages = [t for t in json.loads(conn.getresponse().read()) if t["type"] == "page"]
        conn.close()
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_true(self, expression, timeout):
        deadline = time.time() + timeout
        while not self.eval(expression):
            if time.time() > deadline:
                raise AssertionError(f"not true within {timeout} s: {expression}; page: "
                                     f"{self.eval('document.body ? document.body.innerText : null')!r}")
            time.sleep(0.1)

    def type_keys(self, text):
        for ch in text:
            self.call("Input.dispatchKeyEvent", type="keyDown", key=ch, text=ch)
            self.call("Input.dispatchKeyEvent", type="keyUp", key=ch)

    def close(self):
        self.ws.close()


def token():
    return "hv-" + uuid.uuid4().hex[:10]


def start_shell_guest(agent, name, kernel, initrd, timeout=120):
    """Creates and starts the busybox test guest `name` with a serial console through `agent`;
    returns a ConsoleService stub once its shell answers on that console."""
    spec = domain_pb2.DomainSpec(name=name, vcpus=1, memory_mib=256, serial_console=True)
    spec.kernel.kernel_path = kernel
    spec.kernel.initrd_path = initrd
    spec.kernel.cmdline = "console=ttyS0 quiet"
    agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))
    stub = console_pb2_grpc.ConsoleServiceStub(agent.channel)
    # The shell is up once it answers; until then keep typing (boot takes seconds).
    s = ConsoleStream(stub, name, write=True)
    try:
        word = token()
        s.wait_for_line(word, timeout=timeout, retype=f"echo {word}\n")
    finally:
        s.close()
    return stub


class ConsoleTest(AgentTestCase):
    TTL = 5  # seconds: short, so that the expiry tests wait little, and enough for a loaded machine

    @classmethod
    def agent_config(cls):
        cls.kernel, cls.initrd = test_guest()
        cls.log_dir = tempfile.mkdtemp(prefix="hvcon-logs-")
        cls.port_min = random.randrange(30000, 39000)
        cls.ws_port = free_port()
        return with_security(f"""[console]
ticket_ttl_seconds = {cls.TTL}
ws_listen = "127.0.0.1:{cls.ws_port}"
tcp_listen = "127.0.0.1"
tcp_port_min = {cls.port_min}
tcp_port_max = {cls.port_min + 19}
log_dir = "{cls.log_dir}/logs"
""", kernel_dirs=[os.path.dirname(cls.kernel)])

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.guest = GUEST_PREFIX + uuid.uuid4().hex[:8]
        try:
            cls.stub = start_shell_guest(cls.agent, cls.guest, cls.kernel, cls.initrd)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        virsh("destroy", cls.guest, check=False)
        virsh("undefine", cls.guest, check=False)
        shutil.rmtree(cls.log_dir, ignore_errors=True)
        super().tearDownClass()

    def attach(self, **kw):
        s = ConsoleStream(self.stub, kw.pop("name", self.guest), **kw)
        self.addCleanup(s.close)
        return s

    def test_typed_line_is_echoed_to_the_writer_and_every_reader(self):
        reader = self.attach()
        writer = self.attach(write=True)
        word = token()
        time.sleep(0.3)  # both attached before the guest answers
        writer.type(f"echo {word}\n")
        writer.wait_for_line(word)
        reader.wait_for_line(word)
        self.assertEqual(writer.dropped, 0)

    def test_second_writer_is_refused_and_take_over_ends_the_first(self):
        first = self.attach(write=True)
        word = token()
        first.wait_for_line(word, retype=f"echo {word}\n")  # attached and working
        second = self.attach(write=True)
        self.assertEqual(second.wait_end(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("take_over", second.error.details())
        self.assertFalse(first.done.is_set())
        third = self.attach(write=True, take_over=True)
        self.assertEqual(first.wait_end(), grpc.StatusCode.ABORTED)
        word = token()
        third.wait_for_line(word, retype=f"echo {word}\n")

    def test_a_reader_cannot_type(self):
        reader = self.attach()
        reader.type("echo sneaky\n")
        self.assertEqual(reader.wait_end(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("data:", reader.error.details())

    def test_bad_attach_requests_name_what_is_wrong(self):
        missing = self.attach(name=GUEST_PREFIX + "absent")
        self.assertEqual(missing.wait_end(), grpc.StatusCode.NOT_FOUND)
        no_attach = self.attach(first=console_pb2.ConsoleInput(data=b"ls\n"))
        self.assertEqual(no_attach.wait_end(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("attach", no_attach.error.details())
        empty = self.attach(name="")
        self.assertEqual(empty.wait_end(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("attach.domain_name", empty.error.details())
        stopped = GUEST_PREFIX + uuid.uuid4().hex[:8]
        spec = small_spec(stopped)
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=False))
        try:
            off = self.attach(name=stopped, write=True)
            self.assertEqual(off.wait_end(), grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("not running", off.error.details())
        finally:
            virsh("undefine", stopped, check=False)

    # ---- tickets and the raw TCP endpoint (what nova-serialproxy connects to) ----

    def tcp_ticket(self):
        status, body = self.agent.rest("POST", f"/v1/domains/{self.guest}/console-tickets",
                                       {"kind": "CONSOLE_KIND_SERIAL_TCP"})
        self.assertEqual(status, 201, body)
        self.assertEqual(body["domain_name"], self.guest)
        self.assertEqual(body["host"], "127.0.0.1")
        self.assertTrue(self.port_min <= body["port"] <= self.port_min + 19, body)
        self.assertGreaterEqual(len(body["ticket"]), 43)
        return body

    def test_tcp_ticket_types_and_reads_once_then_the_port_is_closed(self):
        t = self.tcp_ticket()
        word = token()
        with socket.create_connection((t["host"], t["port"]), timeout=10) as c:
            got = b""
            deadline = time.time() + 30
            next_type = 0
            while not re.search(rb"(^|[\r\n])" + word.encode() + rb"\r?\n", got):
                self.assertLess(time.time(), deadline, got[-2000:])
                if time.time() >= next_type:
                    c.sendall(f"echo {word}\n".encode())
                    next_type = time.time() + 3
                c.settimeout(0.5)
                try:
                    chunk = c.recv(65536)
                    self.assertNotEqual(chunk, b"", "the agent closed the connection")
                    got += chunk
                except socket.timeout:
                    pass
            # Exactly one connection per ticket: the listener is gone.
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection((t["host"], t["port"]), timeout=5).close()

    def test_tcp_ticket_unused_until_it_expires_is_closed(self):
        t = self.tcp_ticket()
        time.sleep(self.TTL + 0.7)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection((t["host"], t["port"]), timeout=5).close()

    def test_tcp_ticket_over_grpc_too(self):
        t = self.stub.IssueConsoleTicket(console_pb2.IssueConsoleTicketRequest(
            domain_name=self.guest, kind=console_pb2.CONSOLE_KIND_SERIAL_TCP))
        self.assertGreater(t.port, 0)
        self.assertGreater(t.expire_time.seconds, time.time())
        self.assertLessEqual(t.expire_time.seconds, time.time() + self.TTL + 1)
        with socket.create_connection((t.host, t.port), timeout=10):
            pass

    def test_ticket_requests_that_are_wrong_are_refused_by_name(self):
        path = f"/v1/domains/{self.guest}/console-tickets"
        status, body = self.agent.rest("POST", path, {})
        self.assertEqual(status, 400, body)
        self.assertIn("kind", body["message"])
        # This guest was defined without spec.vnc: no display, said as such (409), not "not built".
        status, body = self.agent.rest("POST", path, {"kind": "CONSOLE_KIND_VNC"})
        self.assertEqual(status, 409, body)
        self.assertIn("kind: vnc", body["message"])
        self.assertIn("has no VNC display", body["message"])
        status, body = self.agent.rest("POST", f"/v1/domains/{GUEST_PREFIX}absent/console-tickets",
                                       {"kind": "CONSOLE_KIND_SERIAL_TCP"})
        self.assertEqual(status, 404, body)
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.IssueConsoleTicket(console_pb2.IssueConsoleTicketRequest(
                kind=console_pb2.CONSOLE_KIND_SERIAL_TCP))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("domain_name", e.exception.details())

    # ---- the browser's way: serial-ws tickets, the WebSocket and the page ----

    def ws_ticket(self, name=None):
        status, body = self.agent.rest("POST", f"/v1/domains/{name or self.guest}/console-tickets",
                                       {"kind": "CONSOLE_KIND_SERIAL_WS"})
        self.assertEqual(status, 201, body)
        self.assertEqual(body["port"], self.ws_port)
        self.assertTrue(body["url"].startswith(f"http://127.0.0.1:{self.ws_port}/console/{name or self.guest}?ticket="),
                        body)
        return body

    def ws_connect(self, query, name=None):
        return websocket.create_connection(
            f"ws://127.0.0.1:{self.ws_port}/console/{name or self.guest}/ws?{query}", timeout=10)

    def ws_refusal(self, query, name=None):
        """The HTTP status of a refused upgrade."""
        with self.assertRaises(websocket.WebSocketBadStatusException) as e:
            self.ws_connect(query, name).close()
        return e.exception.status_code

    def http_get(self, path, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.ws_port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read(), dict(r.getheaders())
        finally:
            conn.close()

    def test_websocket_types_into_the_guest_and_every_reader_sees_the_echo(self):
        grpc_reader = self.attach()
        ws = self.ws_connect("ticket=" + self.ws_ticket()["ticket"])
        try:
            got = b""
            word = token()
            deadline = time.time() + 30
            next_type = 0
            ws.settimeout(0.5)
            while not re.search(rb"(^|[\r\n])" + word.encode() + rb"\r?\n", got):
                self.assertLess(time.time(), deadline, got[-2000:])
                if time.time() >= next_type:
                    ws.send_binary(f"echo {word}\n".encode())
                    next_type = time.time() + 3
                try:
                    opcode, data = ws.recv_data()
                    self.assertEqual(opcode, websocket.ABNF.OPCODE_BINARY)
                    got += data
                except websocket.WebSocketTimeoutException:
                    pass
            # The same line reached the gRPC Attach reader: one console, shared.
            grpc_reader.wait_for_line(word)
        finally:
            ws.close()

    def test_websocket_ticket_is_refused_401_when_reused_expired_or_for_another_domain(self):
        t = self.ws_ticket()["ticket"]
        self.ws_connect("read_only=1&ticket=" + t).close()
        self.assertEqual(self.ws_refusal("ticket=" + t), 401)  # used
        self.assertEqual(self.ws_refusal("ticket="), 401)
        self.assertEqual(self.ws_refusal("read_only=1"), 401)
        expiring = self.ws_ticket()["ticket"]
        time.sleep(self.TTL + 0.5)
        self.assertEqual(self.ws_refusal("ticket=" + expiring), 401)
        # A ticket for this guest presented for another (running or not) is refused and burnt.
        other = self.ws_ticket()["ticket"]
        self.assertEqual(self.ws_refusal("ticket=" + other, name=GUEST_PREFIX + "absent"), 401)
        self.assertEqual(self.ws_refusal("ticket=" + other), 401)
        tcp = self.tcp_ticket()["ticket"]
        self.assertEqual(self.ws_refusal("ticket=" + tcp), 401)  # a serial-tcp ticket is not serial-ws
        self.assertIn("serial-ws connect", self.agent.log_text())  # audited

    def test_websocket_second_writer_is_409_unless_it_takes_over(self):
        first = self.ws_connect("ticket=" + self.ws_ticket()["ticket"])
        try:
            self.assertEqual(self.ws_refusal("ticket=" + self.ws_ticket()["ticket"]), 409)
            taker = self.ws_connect("take_over=1&ticket=" + self.ws_ticket()["ticket"])
            taker.close()
            first.settimeout(10)
            with self.assertRaises(websocket.WebSocketConnectionClosedException):
                while True:
                    opcode, data = first.recv_data(control_frame=True)
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        self.assertEqual(int.from_bytes(data[:2], "big"), 4001, data)
                        raise websocket.WebSocketConnectionClosedException()
        finally:
            first.close()

    def test_page_and_xterm_are_served_and_nothing_else(self):
        status, body, headers = self.http_get(f"/console/{self.guest}?ticket=anything")
        self.assertEqual(status, 200)
        self.assertIn(b"/console/static/xterm.js", body)
        self.assertEqual(headers.get("Referrer-Policy"), "no-referrer")
        status, body, _ = self.http_get("/console/static/xterm.js")
        self.assertEqual(status, 200)
        with open("/usr/share/javascript/xterm/xterm.js", "rb") as f:
            self.assertEqual(body, f.read())  # Debian's libjs-xterm, as installed
        self.assertEqual(self.http_get("/console/static/xterm.css")[0], 200)
        for path in ("/console/static/addons", "/console/static/../../../etc/passwd",
                     "/console/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/usr/share/javascript/xterm/xterm.js", "/"):
            self.assertEqual(self.http_get(path)[0], 404, path)
        # The socket's path without an upgrade: 400, and the ticket is not spent by it.
        t = self.ws_ticket()["ticket"]
        self.assertEqual(self.http_get(f"/console/{self.guest}/ws?ticket={t}")[0], 400)
        self.ws_connect("read_only=1&ticket=" + t).close()

    # ---- the web terminal in a real browser (headless Chromium over the DevTools protocol) ----

    def test_web_terminal_in_headless_chromium_types_and_shows_the_echo(self):
        chromium = shutil.which("chromium")
        if chromium is None:
            self.fail("chromium is not installed (deploy/install-deps.sh --test installs it)")
        profile = tempfile.mkdtemp(prefix="hvcon-chromium-")
        self.addCleanup(shutil.rmtree, profile, ignore_errors=True)
        proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "--window-size=900,600", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def stop_browser():
            proc.kill()
            proc.wait()
            proc.stderr.close()
        self.addCleanup(stop_browser)
        cdp = Devtools(proc)
        self.addCleanup(cdp.close)
        started = time.time()
        cdp.call("Page.enable")
        # A first visit with a made-up ticket (refused) starts the renderer and caches xterm.js:
        # on a fresh machine with a cold disk that alone took longer than a ticket lives.
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{self.ws_port}/console/{self.guest}?ticket=warm-up")
        cdp.wait_true("document.readyState === 'complete' && window.hvConsole !== undefined", 60)
        # Issued only now: this class's tickets live TTL seconds, less than a browser's start.
        cdp.call("Page.navigate", url=self.ws_ticket()["url"])
        # The page has loaded, connected its socket and shows the console.
        cdp.wait_true("window.hvConsole !== undefined && hvConsole.socket.readyState === 1", 20)
        renderer = cdp.eval("hvConsole.renderer")
        # The ticket left the address bar before the socket spent it.
        self.assertNotIn("ticket", cdp.eval("location.href"))
        word = token()
        deadline = time.time() + 30
        pattern = re.compile(r"(^|\n)" + re.escape(word) + r"[ ]*(\n|$)")
        screen = ""
        while not pattern.search(screen):
            self.assertLess(time.time(), deadline, f"no {word!r} on the terminal; it shows: {screen[-2000:]!r}")
            cdp.type_keys(f"echo {word}")  # key events into the focused terminal, as a person types
            cdp.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
                     windowsVirtualKeyCode=13, text="\r")
            cdp.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
            retry = time.time() + 3
            while time.time() < retry and not pattern.search(screen):
                time.sleep(0.2)
                screen = cdp.eval("hvConsole.screen()")
        # What the page rendered (not only what its socket received) holds the typed command and
        # the guest's answer on a line of its own.
        dom = cdp.eval("document.getElementById('terminal').innerText")
        self.assertIn(f"echo {word}", dom)
        self.assertRegex(dom, r"(^|\n)" + re.escape(word) + r"[ ]*(\n|$)")
        shot = cdp.call("Page.captureScreenshot", format="png")["data"]
        out_dir = os.environ.get("HVAGENT_ARTIFACT_DIR") or tempfile.gettempdir()
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "console-web-terminal.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot))
        print(f"\nweb terminal ({renderer}) showed {word} in {time.time() - started:.1f} s; screenshot: {path}")

    # ---- hvctl console, in a pseudo-terminal as a person would run it ----

    def test_hvctl_console_types_in_raw_mode_and_ctrl_bracket_detaches(self):
        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
        master, slave = pty.openpty()
        proc = subprocess.Popen([hvctl, "--server", self.agent.grpc_addr, "console", self.guest],
                                stdin=slave, stdout=slave, stderr=subprocess.PIPE, close_fds=True)
        os.close(slave)
        try:
            word = token()
            got = b""
            deadline = time.time() + 30
            next_type = 0
            while not re.search(rb"(^|[\r\n])" + word.encode() + rb"\r?\n", got):
                self.assertLess(time.time(), deadline, got[-2000:])
                if time.time() >= next_type:
                    os.write(master, f"echo {word}\n".encode())
                    next_type = time.time() + 3
                if select.select([master], [], [], 0.2)[0]:
                    got += os.read(master, 65536)
            os.write(master, b"\x1d")  # Ctrl-]
            code = proc.wait(timeout=10)
            err = proc.stderr.read()
            self.assertEqual(code, 0, err)
            self.assertIn(b"detached", err)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)

    # ---- the console log ----

    def test_console_log_holds_what_the_guest_printed(self):
        writer = self.attach(write=True)
        word = token()
        writer.wait_for_line(word, retype=f"echo {word}\n")
        deadline = time.time() + 10
        while True:
            status, body = self.agent.rest("GET", f"/v1/domains/{self.guest}/console-log?tail_bytes=65536")
            self.assertEqual(status, 200, body)
            text = base64.b64decode(body.get("data", "")).decode(errors="replace")
            if re.search(r"(^|[\r\n])" + word + r"\r?\n", text):
                break
            self.assertLess(time.time(), deadline, text[-2000:])
            time.sleep(0.2)
        self.assertGreaterEqual(int(body["size_bytes"]), len(text))
        status, body = self.agent.rest("GET", f"/v1/domains/{self.guest}/console-log?tail_bytes=2000000")
        self.assertEqual(status, 400, body)
        self.assertIn("tail_bytes", body["message"])
        status, body = self.agent.rest("GET", f"/v1/domains/{GUEST_PREFIX}absent/console-log")
        self.assertEqual(status, 404, body)



class VncConsoleTest(AgentTestCase):
    """CONSOLE_KIND_VNC on a real QEMU guest defined with spec.vnc: each ticket sets a fresh
    password on the live display until its expiry; a small RFB client checks what QEMU's VNC
    server accepts."""

    TTL = 4  # seconds: the expiry test waits this long

    @classmethod
    def agent_config(cls):
        cls.kernel, cls.initrd = test_guest()
        return with_security(f"""[console]
ticket_ttl_seconds = {cls.TTL}
vnc_listen = "127.0.0.1"
""", kernel_dirs=[os.path.dirname(cls.kernel)])

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.guest = GUEST_PREFIX + "vnc-" + uuid.uuid4().hex[:8]
        try:
            spec = domain_pb2.DomainSpec(name=cls.guest, vcpus=1, memory_mib=256, vnc=True)
            spec.kernel.kernel_path = cls.kernel
            spec.kernel.initrd_path = cls.initrd
            spec.kernel.cmdline = "quiet"
            cls.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))
            cls.stub = console_pb2_grpc.ConsoleServiceStub(cls.agent.channel)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for name in (cls.guest, cls.guest + "-off"):
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
        super().tearDownClass()

    def ticket(self):
        t = self.stub.IssueConsoleTicket(console_pb2.IssueConsoleTicketRequest(
            domain_name=self.guest, kind=console_pb2.CONSOLE_KIND_VNC))
        self.assertEqual(t.host, "127.0.0.1")
        self.assertGreaterEqual(t.port, 5900)
        self.assertRegex(t.password, r"^[A-Za-z0-9]{8}$")
        self.assertEqual(t.ticket, "")
        left = t.expire_time.ToDatetime().timestamp() - time.time()
        self.assertTrue(self.TTL - 2 < left <= self.TTL + 1, left)
        return t

    def test_the_tickets_password_opens_the_display_and_a_wrong_or_replaced_one_does_not(self):
        first = self.ticket()
        self.assertEqual(rfb_vnc_auth(first.host, first.port, first.password), (True, ""))
        # Still good within its lifetime (VNC has no ticket: the password is not spent by use).
        self.assertTrue(rfb_vnc_auth(first.host, first.port, first.password)[0])
        wrong = "".join("b" if c == "a" else "a" for c in first.password)
        ok, reason = rfb_vnc_auth(first.host, first.port, wrong)
        self.assertFalse(ok)
        second = self.ticket()
        self.assertNotEqual(second.password, first.password)
        self.assertEqual(second.port, first.port)
        self.assertFalse(rfb_vnc_auth(first.host, first.port, first.password)[0], "the replaced password still opens it")
        self.assertTrue(rfb_vnc_auth(second.host, second.port, second.password)[0])

    def test_the_password_stops_working_when_it_expires(self):
        t = self.ticket()
        self.assertTrue(rfb_vnc_auth(t.host, t.port, t.password)[0])
        time.sleep(self.TTL + 2)
        ok, reason = rfb_vnc_auth(t.host, t.port, t.password)
        self.assertFalse(ok, "an expired password still opens the display")

    def test_the_display_is_locked_before_any_ticket_and_the_password_is_kept_nowhere(self):
        # A fresh guest: no ticket yet, and the definition's password (expired) opens nothing.
        fresh = self.guest + "-fresh"
        spec = domain_pb2.DomainSpec(name=fresh, vcpus=1, memory_mib=128, vnc=True)
        spec.kernel.kernel_path = self.kernel
        spec.kernel.initrd_path = self.initrd
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))
        self.addCleanup(virsh, "undefine", fresh, check=False)
        self.addCleanup(virsh, "destroy", fresh, check=False)
        display = virsh("vncdisplay", fresh).stdout.strip()  # "127.0.0.1:N"
        host, n = display.rsplit(":", 1)
        fresh_def = virsh("dumpxml", "--inactive", "--security-info", fresh).stdout
        fresh_locked = re.search(r"passwd='([^']*)'", fresh_def).group(1)
        self.assertRegex(fresh_locked, r"^[A-Za-z0-9]{8}$")
        self.assertFalse(rfb_vnc_auth(host, 5900 + int(n), fresh_locked)[0], "the locked password opens the display")
        self.assertFalse(rfb_vnc_auth(host, 5900 + int(n), "")[0], "an empty password opens the display")
        self.assertIn("passwd='(hidden)'", self.agent.log_text())  # the debug line of the definition
        self.assertNotIn(fresh_locked, self.agent.log_text())
        # Over REST too: the same answer shape, the password in JSON.
        status, body = self.agent.rest("POST", f"/v1/domains/{self.guest}/console-tickets",
                                       {"kind": "CONSOLE_KIND_VNC"})
        self.assertEqual(status, 201, body)
        password = body["password"]
        self.assertTrue(rfb_vnc_auth("127.0.0.1", body["port"], password)[0])
        definition = virsh("dumpxml", "--inactive", "--security-info", self.guest).stdout
        self.assertIn("<graphics type='vnc'", definition)
        self.assertNotIn(password, definition)
        # The definition's own password expired in 2000: it opens nothing.
        locked = re.search(r"passwd='([^']*)'", definition).group(1)
        self.assertIn("passwdValidTo='2000-01-01T00:00:00'", definition)
        self.assertFalse(rfb_vnc_auth("127.0.0.1", body["port"], locked)[0])
        # The live XML a reader without secrets sees carries no password either.
        self.assertNotIn(password, virsh("dumpxml", self.guest).stdout)
        # Neither the log nor the audit lines (both in the agent's output) have it.
        log = self.agent.log_text()
        self.assertIn("IssueConsoleTicket", log)
        self.assertNotIn(password, log)

    def test_a_stopped_domain_has_no_display_now(self):
        spec = domain_pb2.DomainSpec(name=self.guest + "-off", vcpus=1, memory_mib=128, vnc=True)
        spec.kernel.kernel_path = self.kernel
        spec.kernel.initrd_path = self.initrd
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=False))
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.IssueConsoleTicket(console_pb2.IssueConsoleTicketRequest(
                domain_name=self.guest + "-off", kind=console_pb2.CONSOLE_KIND_VNC))
        self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("not running", e.exception.details())


if __name__ == "__main__":
    unittest.main()
