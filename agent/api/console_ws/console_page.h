#pragma once
// The web terminal the agent serves at /console/{name}?ticket=T: a page that loads xterm.js
// (Debian's libjs-xterm, served from /console/static/) and the script below, which opens the
// console's WebSocket with the ticket of the page's address. Built in, so that serving the page
// reads no file. Scripts are files of their own (no inline script), which the page's
// Content-Security-Policy (script-src 'self') requires.

namespace hvagent::api {

inline constexpr const char* kConsolePage = R"(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hvagent console</title>
<link rel="stylesheet" href="/console/static/xterm.css">
<style>
  body { margin: 0; background: #000; color: #ccc; font-family: sans-serif; }
  #status { padding: 4px 8px; font-size: 13px; background: #222; }
  #terminal { padding: 4px; }
</style>
</head>
<body>
<div id="status">connecting...</div>
<div id="terminal"></div>
<script src="/console/static/xterm.js"></script>
<script src="/console/static/console.js"></script>
</body>
</html>
)";

// window.hvConsole is the page's test hook: send(text) types, output() is everything received.
inline constexpr const char* kConsoleScript = R"((function () {
  'use strict';
  var params = new URLSearchParams(location.search);
  var name = location.pathname.split('/').filter(function (s) { return s.length > 0; })[1] || '';
  var wsParams = new URLSearchParams();
  wsParams.set('ticket', params.get('ticket') || '');
  ['read_only', 'take_over'].forEach(function (k) { if (params.get(k)) wsParams.set(k, params.get(k)); });
  // The socket spends the ticket: keep it out of the address bar, the history and reloads.
  history.replaceState(null, '', location.pathname);
  var status = document.getElementById('status');
  var term = new Terminal({ scrollback: 5000 });
  term.open(document.getElementById('terminal'));
  var received = '';
  var decoder = new TextDecoder();
  var encoder = new TextEncoder();
  var ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
                         '/console/' + name + '/ws?' + wsParams.toString());
  ws.binaryType = 'arraybuffer';
  ws.onopen = function () { status.textContent = 'console of ' + decodeURIComponent(name); term.focus(); };
  ws.onmessage = function (ev) {
    var text = typeof ev.data === 'string' ? ev.data : decoder.decode(new Uint8Array(ev.data), { stream: true });
    received += text;
    term.write(text);
  };
  ws.onclose = function (ev) {
    status.textContent = 'disconnected (' + ev.code + (ev.reason ? ': ' + ev.reason : '') + ')';
  };
  function send(text) {
    if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(text));
  }
  if (typeof term.onData === 'function') term.onData(send); else term.on('data', send);
  window.hvConsole = { send: send, output: function () { return received; }, socket: ws };
})();
)";

}  // namespace hvagent::api
