// Gatehouse: passkeys. The WebAuthn browser API needs script, so this file (served
// from /static, allowed by the page's CSP nonce) runs the ceremonies the pages offer:
// sign-in (a button, and the browser's autofill where it offers it), a second factor
// at /login/verify, a step-up at /step-up, and adding a passkey. Each ceremony asks
// the server for options, hands them to the browser, and sends the answer back; the
// server checks everything. Without this file (or without WebAuthn) the pages work
// as before: their passkey parts stay hidden.
(function () {
  'use strict';

  if (!window.PublicKeyCredential || !navigator.credentials) {
    return;
  }

  // base64url (no padding) <-> bytes, as the server's JSON carries binary fields.
  function toBytes(text) {
    var b64 = text.replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) {
      b64 += '=';
    }
    var raw = atob(b64);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) {
      bytes[i] = raw.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = '';
    for (var i = 0; i < bytes.length; i++) {
      raw += String.fromCharCode(bytes[i]);
    }
    return btoa(raw).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function withIds(list) {
    return (list || []).map(function (c) {
      var copy = Object.assign({}, c);
      copy.id = toBytes(c.id);
      return copy;
    });
  }

  function creationOptions(pk) {
    var o = Object.assign({}, pk);
    o.challenge = toBytes(pk.challenge);
    o.user = Object.assign({}, pk.user, { id: toBytes(pk.user.id) });
    o.excludeCredentials = withIds(pk.excludeCredentials);
    return o;
  }

  function requestOptions(pk) {
    var o = Object.assign({}, pk);
    o.challenge = toBytes(pk.challenge);
    o.allowCredentials = withIds(pk.allowCredentials);
    return o;
  }

  function registrationJSON(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: toText(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: toText(r.attestationObject),
        clientDataJSON: toText(r.clientDataJSON),
        transports: typeof r.getTransports === 'function' ? r.getTransports() : undefined
      },
      extensions: cred.getClientExtensionResults()
    };
  }

  function assertionJSON(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: toText(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: toText(r.authenticatorData),
        clientDataJSON: toText(r.clientDataJSON),
        signature: toText(r.signature),
        userHandle: r.userHandle ? toText(r.userHandle) : null
      },
      extensions: cred.getClientExtensionResults()
    };
  }

  // POSTs JSON; resolves with the answer, or rejects with the server's own words
  // (RFC 9457 problem JSON: its `detail`).
  function post(url, body) {
    return fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body)
    }).then(function (res) {
      return res.json().catch(function () {
        return {};
      }).then(function (data) {
        if (!res.ok) {
          var e = new Error(data.detail || data.title || 'Something went wrong. Try again.');
          e.fromServer = true;
          throw e;
        }
        return data;
      });
    });
  }

  // The browser's own refusals, in words a person can act on.
  function describe(err) {
    if (err && err.fromServer) {
      return err.message;
    }
    switch (err && err.name) {
      case 'NotAllowedError':
        return 'The passkey request was cancelled or timed out. Nothing was changed.';
      case 'InvalidStateError':
        return 'This device already holds a passkey for your account.';
      case 'SecurityError':
        return 'This browser refused passkeys for this address.';
      case 'AbortError':
        return '';
      default:
        return 'Your browser could not use a passkey here. Nothing was changed.';
    }
  }

  function showError(root, message) {
    var box = root.querySelector('[data-passkey-error]');
    if (!box || !message) {
      return;
    }
    box.textContent = message;
    box.hidden = false;
  }

  function clearError(root) {
    var box = root.querySelector('[data-passkey-error]');
    if (box) {
      box.hidden = true;
      box.textContent = '';
    }
  }

  function go(answer) {
    window.location.assign(answer.redirect || '/account');
  }

  function checked(id) {
    var el = document.getElementById(id);
    return !!(el && el.checked);
  }

  // A ceremony that proves a passkey: options, the browser's assertion, the answer.
  function assert(root, base, extra, signal, conditional) {
    var csrf = root.dataset.csrf;
    return post(base + '/options', { csrf_token: csrf, conditional: !!conditional })
      .then(function (options) {
        var request = { publicKey: requestOptions(options.publicKey) };
        if (signal) {
          request.signal = signal;
        }
        if (conditional) {
          request.mediation = 'conditional';
        }
        return navigator.credentials.get(request).then(function (cred) {
          var body = Object.assign({
            csrf_token: csrf,
            ceremony: options.ceremony,
            credential: assertionJSON(cred)
          }, extra());
          return post(base, body);
        });
      });
  }

  function busy(button, on) {
    button.disabled = on;
    button.setAttribute('aria-busy', on ? 'true' : 'false');
  }

  function setUpAssertion(root, base, extra, autofill) {
    var button = root.querySelector('[data-passkey-start]');
    root.hidden = false;
    var pending = null;
    function startAutofill() {
      if (!autofill || !PublicKeyCredential.isConditionalMediationAvailable) {
        return;
      }
      PublicKeyCredential.isConditionalMediationAvailable().then(function (ok) {
        if (!ok) {
          return;
        }
        pending = new AbortController();
        assert(root, base, extra, pending.signal, true).then(go, function (err) {
          // The person asked for nothing here: a browser that refuses or ends the
          // autofill request (no passkey for this site, say) is not news. What the
          // server said about a passkey they picked is.
          if (err && err.fromServer) {
            showError(root, describe(err));
          }
        });
      });
    }
    button.addEventListener('click', function () {
      // One ceremony at a time: the autofill one gives way to the button's.
      if (pending) {
        pending.abort();
        pending = null;
      }
      clearError(root);
      busy(button, true);
      assert(root, base, extra, null, false).then(go, function (err) {
        busy(button, false);
        showError(root, describe(err));
      });
    });
    startAutofill();
  }

  function returnTo(root) {
    return root.dataset.returnTo || null;
  }

  function setUpRegistration(root) {
    var button = root.querySelector('[data-passkey-start]');
    var name = root.querySelector('#passkey-name');
    root.hidden = false;
    document.querySelectorAll('[data-passkey-unsupported]').forEach(function (el) {
      el.hidden = true;
    });
    button.addEventListener('click', function () {
      clearError(root);
      var label = name.value.trim();
      if (!label) {
        showError(root, 'Give the passkey a name, such as “MacBook Touch ID”.');
        name.focus();
        return;
      }
      busy(button, true);
      var csrf = root.dataset.csrf;
      post('/webauthn/register/options', { csrf_token: csrf })
        .then(function (options) {
          return navigator.credentials
            .create({ publicKey: creationOptions(options.publicKey) })
            .then(function (cred) {
              return post('/webauthn/register', {
                csrf_token: csrf,
                ceremony: options.ceremony,
                name: label,
                credential: registrationJSON(cred)
              });
            });
        })
        .then(go, function (err) {
          busy(button, false);
          showError(root, describe(err));
        });
    });
  }

  function start() {
    var signIn = document.querySelector('[data-passkey-sign-in]');
    if (signIn) {
      setUpAssertion(signIn, '/webauthn/sign-in', function () {
        return { remember: checked('remember'), return_to: returnTo(signIn) };
      }, true);
    }
    var verify = document.querySelector('[data-passkey-verify]');
    if (verify) {
      setUpAssertion(verify, '/webauthn/verify', function () {
        return { trust_browser: checked('trust_browser') };
      }, false);
    }
    var stepUp = document.querySelector('[data-passkey-step-up]');
    if (stepUp) {
      setUpAssertion(stepUp, '/webauthn/step-up', function () {
        return { return_to: returnTo(stepUp) };
      }, false);
    }
    var register = document.querySelector('[data-passkey-register]');
    if (register) {
      setUpRegistration(register);
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
