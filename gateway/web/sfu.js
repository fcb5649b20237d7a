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

  // The STUN/TURN servers the server tells clients about (/api/bootstrap: TURN credentials
  // only for a room the token opens). Without them a browser behind NAT offers only host
  // candidates. A failed bootstrap is not fatal: the page goes on without ICE servers.
  async iceServers(room, token) {
    try {
      const url = new URL("/api/bootstrap", location.origin);
      if (room) url.searchParams.set("room", room);
      const resp = await fetch(url.href, { headers: sfu.headers(token) });
      if (!resp.ok) throw new Error(await sfu.describeError(resp));
      const body = await resp.json();
      return Array.isArray(body.iceServers) ? body.iceServers : [];
    } catch (err) {
      console.warn(`bootstrap failed (${err.message || err}); no STUN/TURN servers`);
      return [];
    }
  },

  // The page's RTCPeerConnection, with the bootstrap's ICE servers (window.sfuIceServers
  // shows them to the tests and to a curious operator's console).
  async newPeerConnection(room, token) {
    const iceServers = await sfu.iceServers(room, token);
    window.sfuIceServers = iceServers;
    return new RTCPeerConnection({ iceServers });
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

  // RFC 9725 §4.3 ICE restart: new credentials and candidates in a PATCH with If-Match: *,
  // the server's new ones in the 200 (an sdpfrag), applied as the new answer. DTLS and the
  // media go on; only the ICE session is new. Updates session.etag; returns the HTTP status.
  async restartIce(pc, session, token) {
    pc.restartIce();
    await pc.setLocalDescription(await pc.createOffer());
    await sfu.waitForIceGathering(pc);
    const offer = pc.localDescription.sdp;
    const value = (sdp, name) => (sdp.match(new RegExp(`^a=${name}:(.*)$`, "m")) || [])[1];
    const mid = value(offer, "mid") || "0";
    const mline = offer.split("\r\n").find((line) => line.startsWith("m=")) || "m=audio 9 UDP/TLS/RTP/SAVPF 0";
    const candidates = offer.split("\r\n").filter((line) => line.startsWith("a=candidate:"));
    const fragment = [
      `a=ice-ufrag:${value(offer, "ice-ufrag")}`,
      `a=ice-pwd:${value(offer, "ice-pwd")}`,
      mline,
      `a=mid:${mid}`,
      ...candidates,
      "a=end-of-candidates",
      "",
    ].join("\r\n");
    const resp = await fetch(session.location, {
      method: "PATCH",
      headers: { ...sfu.headers(token, "application/trickle-ice-sdpfrag"), "If-Match": "*" },
      body: fragment,
    });
    if (resp.status !== 200) {
      // The server keeps the old ICE session (RFC 9725): go back to it.
      const message = await sfu.describeError(resp);
      await pc.setLocalDescription({ type: "rollback" });
      throw new Error(`ICE restart refused: ${message}`);
    }
    const answerFragment = await resp.text();
    session.etag = resp.headers.get("ETag");
    // The new answer: the previous one with the server's new credentials and candidates.
    const ufrag = value(answerFragment, "ice-ufrag");
    const pwd = value(answerFragment, "ice-pwd");
    const serverCandidates = answerFragment.split("\r\n").filter((l) => l.startsWith("a=candidate:"));
    const lines = [];
    for (const line of pc.remoteDescription.sdp.split("\r\n")) {
      if (line.startsWith("a=candidate:") || line === "a=end-of-candidates") continue;
      if (line.startsWith("a=ice-ufrag:")) lines.push(`a=ice-ufrag:${ufrag}`);
      else if (line.startsWith("a=ice-pwd:")) {
        lines.push(`a=ice-pwd:${pwd}`, ...serverCandidates, "a=end-of-candidates");
      } else lines.push(line);
    }
    await pc.setRemoteDescription({ type: "answer", sdp: lines.join("\r\n") });
    return resp.status;
  },

  // A network change (Wi-Fi to cellular, a NAT that forgot us) fails ICE: restart it once per
  // failure instead of dropping the session; window.sfuRestartIce lets a user or test ask.
  restartOnFailure(pc, getSession, token) {
    let restarting = false;
    const restart = async () => {
      const session = getSession();
      if (restarting || !session || pc.connectionState === "closed") return null;
      restarting = true;
      try {
        return await sfu.restartIce(pc, session, token);
      } catch (err) {
        console.warn(String(err.message || err));
        return null;
      } finally {
        restarting = false;
      }
    };
    pc.addEventListener("iceconnectionstatechange", () => {
      if (pc.iceConnectionState === "failed") restart();
    });
    window.sfuRestartIce = restart;
  },
};

window.sfu = sfu;
