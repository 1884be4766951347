// Passkeys (WebAuthn) for the IdP's pages. A form marked data-passkey="get" or "create" carries
// the server's options (JSON, with a one-time challenge) in data-options; on submit this script
// asks the browser's authenticator, puts its answer (JSON) into the form's hidden "credential"
// field and sends the form as usual. Without WebAuthn the passkey parts stay hidden and the
// password form works alone. Loaded from a file: the pages' CSP runs no inline script.
"use strict";
(() => {
  if (!window.PublicKeyCredential || !navigator.credentials) return;
  // browsers refuse WebAuthn on an IP address (an RP ID is a domain): offer nothing there
  if (/^[\d.]+$/.test(location.hostname) || location.hostname.startsWith("[")) return;

  const toBytes = (b64url) => {
    const b64 = b64url.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  };
  const toB64url = (buffer) => {
    let bin = "";
    for (const byte of new Uint8Array(buffer)) bin += String.fromCharCode(byte);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };
  const descriptors = (list) => (list || []).map((c) => ({ ...c, id: toBytes(c.id) }));

  const creationOptions = (o) => ({
    ...o,
    challenge: toBytes(o.challenge),
    user: { ...o.user, id: toBytes(o.user.id) },
    excludeCredentials: descriptors(o.excludeCredentials),
  });
  const requestOptions = (o) => ({
    ...o,
    challenge: toBytes(o.challenge),
    allowCredentials: descriptors(o.allowCredentials),
  });

  const registrationJSON = (cred) => ({
    id: cred.id,
    rawId: toB64url(cred.rawId),
    type: cred.type,
    authenticatorAttachment: cred.authenticatorAttachment || undefined,
    clientExtensionResults: cred.getClientExtensionResults(),
    response: {
      clientDataJSON: toB64url(cred.response.clientDataJSON),
      attestationObject: toB64url(cred.response.attestationObject),
      transports: cred.response.getTransports ? cred.response.getTransports() : [],
    },
  });
  const assertionJSON = (cred) => ({
    id: cred.id,
    rawId: toB64url(cred.rawId),
    type: cred.type,
    authenticatorAttachment: cred.authenticatorAttachment || undefined,
    clientExtensionResults: cred.getClientExtensionResults(),
    response: {
      clientDataJSON: toB64url(cred.response.clientDataJSON),
      authenticatorData: toB64url(cred.response.authenticatorData),
      signature: toB64url(cred.response.signature),
      userHandle: cred.response.userHandle ? toB64url(cred.response.userHandle) : undefined,
    },
  });

  const showError = (form, error) => {
    const box = form.querySelector("[data-passkey-error]");
    const cancelled = error && error.name === "NotAllowedError";
    box.textContent = cancelled
      ? "パスキーの操作が取り消されたか、時間切れになりました。 The passkey request was cancelled or timed out."
      : "パスキーを使えませんでした。 The passkey could not be used" + (error && error.message ? ": " + error.message : ".");
    box.hidden = false;
  };

  for (const form of document.querySelectorAll("form[data-passkey]")) {
    const section = form.closest("section[hidden]");
    if (section) section.hidden = false;
    const kind = form.dataset.passkey;
    let busy = false;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (busy || !form.reportValidity()) return;
      busy = true;
      const button = form.querySelector("button[type=submit]");
      button.setAttribute("aria-busy", "true");
      try {
        const options = JSON.parse(form.dataset.options);
        const answer = kind === "create"
          ? registrationJSON(await navigator.credentials.create({ publicKey: creationOptions(options) }))
          : assertionJSON(await navigator.credentials.get({ publicKey: requestOptions(options) }));
        form.elements.credential.value = JSON.stringify(answer);
        form.submit();
      } catch (error) {
        showError(form, error);
        busy = false;
        button.removeAttribute("aria-busy");
        button.focus();
      }
    });
  }
})();
