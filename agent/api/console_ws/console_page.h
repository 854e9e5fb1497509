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
  .hv-plain-terminal { margin: 0; height: calc(100vh - 40px); overflow-y: auto; outline: none;
    color: #ddd; font: 14px/1.2 monospace; white-space: pre-wrap; word-break: break-all; }
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

// window.hvConsole is the page's test hook: send(text) types, output() is everything received,
// screen() the text the terminal shows, renderer which terminal shows it.
//
// Debian 12's libjs-xterm (3.8.1+~cs0.9.0-1+deb12u1) ships an xterm.js that is an unbundled
// CommonJS stub (it calls require() and writes to `exports`), so no browser can load it and
// `Terminal` stays undefined. Rather than leave the page blank, it then falls back to a small
// built-in text terminal: lines, carriage return, backspace, tabs, escape sequences skipped, and
// the keys a shell needs. A working xterm.js (a fixed package) is used as soon as it loads.
inline constexpr const char* kConsoleScript = R"((function () {
  'use strict';
  function PlainTerminal() {
    var lines = [''], row = 0, col = 0, esc = 0, dataCb = null, pre = null, pending = false;
    var MAX_LINES = 5000;
    function put(ch) {
      var l = lines[row];
      if (l.length < col) l += ' '.repeat(col - l.length);
      lines[row] = l.slice(0, col) + ch + l.slice(col + 1);
      col++;
    }
    function newline() {
      row++;
      if (row >= lines.length) lines.push('');
      if (lines.length > MAX_LINES) { lines.splice(0, lines.length - MAX_LINES); row = lines.length - 1; }
    }
    function render() {
      pending = false;
      if (!pre) return;
      pre.textContent = lines.join('\n');
      pre.scrollTop = pre.scrollHeight;
    }
    this.open = function (parent) {
      pre = document.createElement('pre');
      pre.className = 'hv-plain-terminal';
      pre.tabIndex = 0;
      parent.appendChild(pre);
      pre.addEventListener('keydown', function (ev) {
        var s = keyToBytes(ev);
        if (s === null) return;
        ev.preventDefault();
        if (dataCb) dataCb(s);
      });
      pre.addEventListener('paste', function (ev) {
        ev.preventDefault();
        if (dataCb) dataCb(ev.clipboardData.getData('text').replace(/\r?\n/g, '\r'));
      });
      render();
    };
    this.focus = function () { if (pre) pre.focus(); };
    this.onData = function (cb) { dataCb = cb; };
    this.text = function () { return lines.join('\n'); };
    this.write = function (text) {
      for (var i = 0; i < text.length; i++) {
        var ch = text[i], c = text.charCodeAt(i);
        if (esc === 1) {  // after ESC: CSI, OSC, or a two-byte sequence
          esc = ch === '[' ? 2 : ch === ']' ? 3 : 0;
          continue;
        }
        if (esc === 2) {  // CSI: parameters until a final byte
          if (c >= 0x40 && c <= 0x7e) {
            esc = 0;
            if (ch === 'K') lines[row] = lines[row].slice(0, col);  // erase to end of line
          }
          continue;
        }
        if (esc === 3) {  // OSC: until BEL or ESC \
          if (c === 7) esc = 0; else if (c === 27) esc = 1;
          continue;
        }
        if (c === 27) esc = 1;
        else if (ch === '\r') col = 0;
        else if (ch === '\n') newline();
        else if (c === 8) { if (col > 0) col--; }
        else if (ch === '\t') { do { put(' '); } while (col % 8 !== 0); }
        else if (c >= 32 && c !== 127) put(ch);
      }
      if (!pending) { pending = true; requestAnimationFrame(render); }
    };
  }
  function keyToBytes(ev) {
    var named = { Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b', ArrowUp: '\x1b[A',
                  ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D', Home: '\x1b[H',
                  End: '\x1b[F', Delete: '\x1b[3~' };
    if (ev.metaKey) return null;
    if (ev.ctrlKey && !ev.altKey && ev.key.length === 1) {
      var u = ev.key.toUpperCase().charCodeAt(0);
      if (u >= 64 && u <= 95) return String.fromCharCode(u & 31);
      return null;
    }
    if (Object.prototype.hasOwnProperty.call(named, ev.key)) return named[ev.key];
    if (ev.key.length === 1 && !ev.ctrlKey) return (ev.altKey ? '\x1b' : '') + ev.key;
    return null;
  }
  var params = new URLSearchParams(location.search);
  var name = location.pathname.split('/').filter(function (s) { return s.length > 0; })[1] || '';
  var wsParams = new URLSearchParams();
  wsParams.set('ticket', params.get('ticket') || '');
  ['read_only', 'take_over'].forEach(function (k) { if (params.get(k)) wsParams.set(k, params.get(k)); });
  // The socket spends the ticket: keep it out of the address bar, the history and reloads.
  history.replaceState(null, '', location.pathname);
  var status = document.getElementById('status');
  var holder = document.getElementById('terminal');
  var term = null, renderer = 'xterm.js';
  try {
    if (typeof Terminal === 'function') {
      term = new Terminal({ scrollback: 5000 });
      term.open(holder);
    }
  } catch (e) {
    term = null;
    holder.textContent = '';
  }
  if (term === null) {
    renderer = 'plain';
    term = new PlainTerminal();
    term.open(holder);
  }
  var received = '';
  var decoder = new TextDecoder();
  var encoder = new TextEncoder();
  var ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
                         '/console/' + name + '/ws?' + wsParams.toString());
  ws.binaryType = 'arraybuffer';
  ws.onopen = function () {
    status.textContent = 'console of ' + decodeURIComponent(name) +
        (renderer === 'plain' ? ' (plain text terminal: xterm.js did not load)' : '');
    term.focus();
  };
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
  function screen() {
    if (renderer === 'plain') return term.text();
    var b = term.buffer && term.buffer.active, out = [];
    if (!b) return holder.innerText;  // an xterm.js without the buffer API: what the DOM shows
    for (var i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
    return out.join('\n');
  }
  window.hvConsole = { send: send, output: function () { return received; }, screen: screen,
                       renderer: renderer, socket: ws };
})();
)";

}  // namespace hvagent::api
