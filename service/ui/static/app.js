// The live pages' plumbing: the API key (sessionStorage, this tab only), calls to the JSON
// API with it, the sign-in form, and the status widgets the pages share.
"use strict";
(function (SA) {
  const el = SA.el;
  const KEY = "shiftaudit.key";

  SA.key = () => window.sessionStorage.getItem(KEY);

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }
  SA.ApiError = ApiError;

  // One call to the JSON API with the key; problem details become an ApiError with their text.
  SA.api = async function (path, options) {
    const response = await fetch(path, Object.assign({}, options || {}, {
      headers: Object.assign({ Authorization: `Bearer ${SA.key()}` }, (options && options.headers) || {}),
      credentials: "omit",
      cache: "no-store",
    }));
    if (response.status === 401) {
      signOut("Your key was refused; sign in again.");
      throw new ApiError(401, "signed out");
    }
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (ignored) { /* not JSON: keep the status line */ }
      throw new ApiError(response.status, detail);
    }
    return options && options.raw ? response : response.json();
  };

  const models = new Map();
  SA.model = function (id) {
    if (!models.has(id)) models.set(id, SA.api(`/v1/models/${encodeURIComponent(id)}`).catch(() => null));
    return models.get(id);
  };
  const probeSets = new Map();
  SA.probeSet = function (id) {
    if (!probeSets.has(id)) probeSets.set(id, SA.api(`/v1/probe-sets/${encodeURIComponent(id)}`).catch(() => null));
    return probeSets.get(id);
  };

  SA.badge = function (status) {
    return el("span", { class: `badge status-${status}`, text: status, attrs: { "data-status": status } });
  };

  SA.progress = function (audit) {
    const percent = Math.round(100 * (audit.progress || 0));
    const fill = el("div", { class: "fill" });
    fill.style.width = `${percent}%`; // CSSOM, not a style attribute
    const bar = el("div", { class: `progress status-${audit.status}`, attrs: { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": percent } }, fill);
    return el("div", { class: "progress-cell" }, bar, el("span", { class: "muted", text: `${percent}%` }));
  };

  SA.error = function (container, error) {
    container.append(el("div", { class: "alert", attrs: { role: "alert" }, text: error && error.message ? error.message : String(error) }));
  };

  SA.reportLink = (id) => `/ui/audits/${encodeURIComponent(id)}`;

  function signOut(message) {
    window.sessionStorage.removeItem(KEY);
    showSignIn(message);
  }

  function showSignIn(message) {
    document.getElementById("content").hidden = true;
    document.getElementById("who").hidden = true;
    document.getElementById("signin").hidden = false;
    document.getElementById("signin-error").textContent = message || "";
    document.getElementById("api-key").focus();
  }

  // Checks the key, shows who is signed in, then draws the page into #content.
  async function enter(render) {
    const me = await SA.api("/v1/me");
    document.getElementById("who-team").textContent = `team ${me.team} · ${me.scope}`;
    document.getElementById("who").hidden = false;
    document.getElementById("signin").hidden = true;
    const content = SA.clear(document.getElementById("content"));
    content.hidden = false;
    try {
      await render(content);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) SA.error(content, error);
    }
  }

  SA.start = function (render) {
    const page = document.body.dataset.page;
    document.querySelectorAll("[data-nav]").forEach((link) => {
      if (link.dataset.nav === page) link.classList.add("active");
    });
    document.getElementById("sign-out").addEventListener("click", () => signOut(""));
    document.getElementById("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = document.getElementById("api-key");
      window.sessionStorage.setItem(KEY, input.value.trim());
      input.value = "";
      try {
        await enter(render);
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 401)) signOut(error.message);
      }
    });
    if (SA.key()) enter(render).catch(() => {});
    else showSignIn("");
  };
})(window.SA = window.SA || {});
