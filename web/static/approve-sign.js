// Signed approval in the browser (web/approvals.py): the approver picks their key file
// (normally a web key file from `tiangong keys export-web`, opened with its passphrase),
// the page imports it as a non-extractable WebCrypto Ed25519 key (kept in this page only),
// fetches from the hub the exact bytes to sign — the hub builds the canonical payload and
// its envelope encoding, this script never builds JSON — signs them, and posts the payload
// and the 64-byte signature. The key file input has no name and sits outside every form,
// so its content is never sent. CSP forbids inline scripts, hence a file.
(function () {
  "use strict";
  var form = document.getElementById("sign-form");
  var fileInput = document.getElementById("sign-key-file");
  if (!form || !fileInput) {
    return;
  }
  var status = document.getElementById("sign-status");

  function say(text) {
    status.textContent = text;
  }

  function b64ToBytes(text) {
    var raw = atob(text);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) {
      out[i] = raw.charCodeAt(i);
    }
    return out;
  }

  function bytesToB64(bytes) {
    var raw = "";
    for (var i = 0; i < bytes.length; i++) {
      raw += String.fromCharCode(bytes[i]);
    }
    return btoa(raw);
  }

  function b64url(bytes) {
    return bytesToB64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function hexToBytes(hex) {
    var out = new Uint8Array(hex.length / 2);
    for (var i = 0; i < out.length; i++) {
      out[i] = parseInt(hex.substr(i * 2, 2), 16);
    }
    return out;
  }

  function jwkFor(seed, publicBytes) {
    return { kty: "OKP", crv: "Ed25519", d: b64url(seed), x: b64url(publicBytes), ext: false };
  }

  // A web key file (tiangong keys export-web): PBKDF2-SHA256 -> AES-256-GCM, the key id as
  // additional data (signing/webkey.py). The passphrase is NFC-normalised like the CLI's.
  function openWebKey(doc) {
    var pass = document.getElementById("sign-passphrase").value;
    if (!pass) {
      return Promise.reject(new Error("type the web key file's passphrase"));
    }
    if (doc.kdf.name !== "pbkdf2-sha256" || doc.cipher !== "aes-256-gcm") {
      return Promise.reject(new Error("unsupported web key file"));
    }
    var enc = new TextEncoder();
    return crypto.subtle.importKey("raw", enc.encode(pass.normalize("NFC")), "PBKDF2", false,
                                   ["deriveKey"]).then(function (base) {
      return crypto.subtle.deriveKey(
        { name: "PBKDF2", hash: "SHA-256", salt: b64ToBytes(doc.kdf.salt),
          iterations: doc.kdf.iterations },
        base, { name: "AES-GCM", length: 256 }, false, ["decrypt"]);
    }).then(function (aes) {
      return crypto.subtle.decrypt(
        { name: "AES-GCM", iv: b64ToBytes(doc.nonce), additionalData: enc.encode(doc.key_id) },
        aes, b64ToBytes(doc.ciphertext));
    }).then(function (seed) {
      return crypto.subtle.importKey("jwk", jwkFor(new Uint8Array(seed), hexToBytes(doc.public)),
                                     { name: "Ed25519" }, false, ["sign"]);
    }, function (err) {
      if (err && err.name === "OperationError") {
        throw new Error("wrong passphrase for the web key file");
      }
      throw err;
    });
  }

  // A web key file, a tiangong key file stored without a passphrase, or a PKCS#8 PEM file.
  function importKey(text) {
    var alg = { name: "Ed25519" };
    if (text.indexOf("-----BEGIN PRIVATE KEY-----") !== -1) {
      var body = text.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
      return crypto.subtle.importKey("pkcs8", b64ToBytes(body), alg, false, ["sign"]);
    }
    var doc;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      return Promise.reject(new Error("the file is neither a tiangong key file nor a PKCS#8 PEM file"));
    }
    if (doc.format === "tiangong-web-key/1") {
      return openWebKey(doc);
    }
    if (doc.format === "tiangong-public-key/1") {
      return Promise.reject(new Error("this is a public key file; pick the private key file"));
    }
    if (doc.format !== "tiangong-private-key/1" || doc.scheme !== "ed25519") {
      return Promise.reject(new Error("not a tiangong Ed25519 private key file"));
    }
    if (doc.protection !== "none") {
      return Promise.reject(new Error("this key file is protected with Argon2id, which the " +
        "browser cannot open: make a web key file of it (tiangong keys export-web), or run " +
        "`tiangong keys approve` and upload the approval file"));
    }
    return crypto.subtle.importKey("jwk", jwkFor(b64ToBytes(doc.secret), hexToBytes(doc.public)),
                                   alg, false, ["sign"]);
  }

  function readFile(file) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () { resolve(reader.result); };
      reader.onerror = function () { reject(new Error("cannot read " + file.name)); };
      reader.readAsText(file);
    });
  }

  form.addEventListener("submit", function (event) {
    if (document.getElementById("sign-signature").value) {
      return; // signed: let the form go
    }
    event.preventDefault();
    var file = fileInput.files && fileInput.files[0];
    if (!file) {
      say("Pick your approver key file first.");
      return;
    }
    var params = new URLSearchParams({
      environment: document.getElementById("sign-environment").value,
      comment: document.getElementById("sign-comment").value
    });
    var key;
    say("Signing…");
    readFile(file).then(importKey).then(function (k) {
      key = k;
      return fetch(form.dataset.payloadUrl + "?" + params.toString(),
                   { credentials: "same-origin", headers: { "Accept": "application/json" } });
    }).then(function (resp) {
      if (!resp.ok) {
        return resp.text().then(function (t) {
          var doc = new DOMParser().parseFromString(t, "text/html");
          var msg = doc.querySelector("#error-message, main p");
          throw new Error(msg ? msg.textContent.trim() : "the hub answered " + resp.status);
        });
      }
      return resp.json();
    }).then(function (req) {
      return crypto.subtle.sign({ name: "Ed25519" }, key, b64ToBytes(req.message)).then(
        function (sig) {
          document.getElementById("sign-payload").value = req.payload;
          document.getElementById("sign-signature").value = bytesToB64(new Uint8Array(sig));
          say("Signed; sending the signature…");
          form.submit();
        });
    }).catch(function (err) {
      say("Not signed: " + (err && err.message ? err.message : err));
    });
  });
}());
