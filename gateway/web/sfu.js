// Shared WHIP/WHEP client code for publish.html and play.html. Plain browser JS, no build step.
// Everything user-supplied is written with textContent / value, never innerHTML.
"use strict";

// Read by the browser tests through page.evaluate: keep the shape {connectionState, error}.
window.sfuState = { connectionState: "new", error: null };

const sfu = {
  // Status line + window.sfuState in one place so the UI and the tests never disagree.
  setState(connectionState, error) {
    window.sfuState.connectionState = connectionState;
    if (error !== undefined) window.sfuState.error = error;
    const status = document.getElementById("status");
    if (status) status.textContent = error ? `${connectionState}: ${error}` : connectionState;
  },

  // Room and token come from ?room= / ?token= so links and tests can prefill the form.
  prefill() {
    const params = new URLSearchParams(location.search);
    for (const name of ["room", "token"]) {
      const input = document.getElementById(name);
      if (input && params.has(name)) input.value = params.get(name);
    }
  },

  // ?codec=VP9 or ?codec=VP9;profile-id=2 (NAME[;fmtp param...]): move the matching codecs
  // to the front of the video transceiver's list, so the offer's first choice is that codec.
  // The rest stay offered; the caller checks what was actually negotiated.
  preferVideoCodec(transceiver, spec) {
    const [name, ...params] = spec.split(";").map((part) => part.trim());
    const wanted = `video/${name}`.toLowerCase();
    const codecs = RTCRtpSender.getCapabilities("video").codecs;
    const matches = (c) => c.mimeType.toLowerCase() === wanted
      && params.every((p) => (c.sdpFmtpLine || "").split(";").includes(p));
    const chosen = codecs.filter(matches);
    if (!chosen.length) throw new Error(`this browser cannot send ${spec}`);
    transceiver.setCodecPreferences([...chosen, ...codecs.filter((c) => !matches(c))]);
  },

  endpoint(kind, room) {
    const path = kind === "whip" ? "/api/whip/publish/" : "/api/whep/play/";
    return new URL(path + encodeURIComponent(room), location.origin).href;
  },

  headers(token, contentType) {
    const headers = {};
    if (contentType) headers["Content-Type"] = contentType;
    // RFC 9725: a client without a configured token must not send Authorization at all.
    if (token) headers["Authorization"] = `Bearer ${token}`;
    return headers;
  },

  // The server cannot trickle and we do not PATCH, so the offer must carry our candidates.
  // Cap the wait: Chromium can take seconds to finish gathering on hosts with odd interfaces,
  // and the host candidates are already in the SDP by then.
  waitForIceGathering(pc, capMs = 2000) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, capMs);
      function done() {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
      function check() {
        if (pc.iceGatheringState === "complete") done();
      }
      pc.addEventListener("icegatheringstatechange", check);
    });
  },

  // Turn a non-201 answer into a readable message; the server sends JSON errors.
  async describeError(resp) {
    const text = await resp.text();
    try {
      const body = JSON.parse(text);
      const detail = body.error || body.detail || body.title || text;
      return `HTTP ${resp.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
    } catch {
      return `HTTP ${resp.status}: ${text.slice(0, 300)}`;
    }
  },

  // POST the offer; returns {location, etag, answer}. Location is resolved against the URL
  // that finally answered, because a 307 may have moved us to another node.
  async postOffer(url, sdp, token) {
    const resp = await fetch(url, {
      method: "POST",
      headers: sfu.headers(token, "application/sdp"),
      body: sdp,
    });
    if (resp.status !== 201) throw new Error(await sfu.describeError(resp));
    const location = resp.headers.get("Location");
    if (!location) throw new Error("201 without a Location header (CORS Expose-Headers?)");
    return {
      location: new URL(location, resp.url).href,
      etag: resp.headers.get("ETag"),
      answer: await resp.text(),
    };
  },

  // keepalive lets the DELETE leave even when called from pagehide.
  deleteSession(location, token) {
    return fetch(location, { method: "DELETE", headers: sfu.headers(token), keepalive: true });
  },

  // Offer -> POST -> answer, shared by both pages. Returns the session.
  async negotiate(pc, kind, room, token) {
    await pc.setLocalDescription(await pc.createOffer());
    await sfu.waitForIceGathering(pc);
    const session = await sfu.postOffer(sfu.endpoint(kind, room), pc.localDescription.sdp, token);
    await pc.setRemoteDescription({ type: "answer", sdp: session.answer });
    return session;
  },

  trackConnectionState(pc) {
    pc.addEventListener("connectionstatechange", () => sfu.setState(pc.connectionState));
  },
};

window.sfu = sfu;
