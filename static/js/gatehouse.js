// Gatehouse: progressive enhancement only. Every page works without this file; it
// adds conveniences where a browser runs it (served from /static, allowed by the
// page's CSP nonce).
(function () {
  'use strict';

  // Copy buttons: the TOTP key (shown in groups of four; copied without the spaces)
  // and the recovery codes (one per line).
  var COPYABLE = [
    { selector: 'code.secret', kind: 'compact', label: 'Copy key' },
    { selector: 'ol.codes', kind: 'lines', label: 'Copy all codes' }
  ];

  function textOf(el) {
    if (el.dataset.copy === 'lines') {
      return Array.from(el.querySelectorAll('li')).map(function (li) {
        return li.textContent.trim();
      }).join('\n') + '\n';
    }
    var text = el.textContent.trim();
    return el.dataset.copy === 'compact' ? text.replace(/\s+/g, '') : text;
  }

  function addCopyButton(el) {
    if (!navigator.clipboard || !window.isSecureContext) {
      return; // Plain HTTP outside localhost has no clipboard API: nothing to offer.
    }
    var button = document.createElement('button');
    button.type = 'button';
    button.className = 'button copy';
    var label = el.dataset.copyLabel || 'Copy';
    button.textContent = label;
    var status = document.createElement('span');
    status.className = 'copy-status';
    status.setAttribute('role', 'status');
    button.addEventListener('click', function () {
      navigator.clipboard.writeText(textOf(el)).then(function () {
        // Said once, by the status (a screen reader reads it); the button keeps
        // its name.
        status.textContent = 'Copied';
        window.setTimeout(function () {
          status.textContent = '';
        }, 2000);
      }, function () {
        status.textContent = 'Copying did not work: select the text and copy it instead.';
      });
    });
    var holder = document.createElement('p');
    holder.className = 'copy-row';
    holder.appendChild(button);
    holder.appendChild(status);
    // After the paragraph that holds the element (a <p> may not hold another).
    (el.closest('p') || el).insertAdjacentElement('afterend', holder);
  }

  // Times: <time data-relative datetime="…"> shows "5 minutes ago" kept current
  // while the page stays open, with the local date and time on hover.
  var units = [
    ['day', 86400],
    ['hour', 3600],
    ['minute', 60]
  ];
  var relative = window.Intl && Intl.RelativeTimeFormat
    ? new Intl.RelativeTimeFormat(document.documentElement.lang || undefined, { numeric: 'auto' })
    : null;

  function describe(date) {
    var seconds = Math.round((date.getTime() - Date.now()) / 1000);
    if (Math.abs(seconds) < 60) {
      return 'just now';
    }
    for (var i = 0; i < units.length; i++) {
      var size = units[i][1];
      if (Math.abs(seconds) >= size || i === units.length - 1) {
        return relative.format(Math.round(seconds / size), units[i][0]);
      }
    }
    return '';
  }

  function refreshTimes() {
    document.querySelectorAll('time[data-relative]').forEach(function (el) {
      var date = new Date(el.getAttribute('datetime'));
      if (isNaN(date.getTime()) || !relative) {
        return;
      }
      el.textContent = describe(date);
      el.title = date.toLocaleString(document.documentElement.lang || undefined);
    });
  }

  function start() {
    COPYABLE.forEach(function (c) {
      document.querySelectorAll(c.selector).forEach(function (el) {
        el.dataset.copy = c.kind;
        el.dataset.copyLabel = c.label;
        addCopyButton(el);
      });
    });
    refreshTimes();
    if (document.querySelector('time[data-relative]')) {
      window.setInterval(refreshTimes, 30000);
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
