// twill dashboard: keeps the page live. The server renders every region
// (escaped by html/template); this script swaps them in as server-sent
// events bring them, and ticks the countdowns in between. Without it the
// page is a plain snapshot.
(function () {
  'use strict';
  var page = document.body.getAttribute('data-page');
  var live = document.getElementById('live');

  function span(s) {
    s = Math.max(0, Math.round(s));
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, x = s % 60;
    var two = function (n) { return (n < 10 ? '0' : '') + n; };
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + two(m) + 'm';
    if (m > 0) return m + 'm ' + two(x) + 's';
    return x + 's';
  }

  function tick() {
    var now = Date.now();
    var els = document.querySelectorAll('[data-expires]');
    for (var i = 0; i < els.length; i++) {
      var left = (Date.parse(els[i].getAttribute('data-expires')) - now) / 1000;
      els[i].textContent = span(left);
      els[i].classList.toggle('soon', left < 300);
    }
    els = document.querySelectorAll('[data-since]');
    for (i = 0; i < els.length; i++) {
      els[i].textContent = span((now - Date.parse(els[i].getAttribute('data-since'))) / 1000) + ' ago';
    }
  }

  function setLive(on, text) {
    live.className = 'live ' + (on ? 'on' : 'off');
    live.textContent = text;
  }

  tick();
  setInterval(tick, 1000);
  if (!window.EventSource || !page) return;

  var es = new EventSource('/events?page=' + encodeURIComponent(page));
  es.addEventListener('update', function (e) {
    var regions = JSON.parse(e.data).regions || {};
    Object.keys(regions).forEach(function (name) {
      var els = document.querySelectorAll('[data-region="' + name + '"]');
      for (var i = 0; i < els.length; i++) els[i].innerHTML = regions[name];
    });
    tick();
    setLive(true, 'live');
    document.body.setAttribute('data-updated', String(Date.now()));
  });
  es.onerror = function () { setLive(false, 'reconnecting…'); };
})();
