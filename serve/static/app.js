// The demo page: microphone -> AudioWorklet -> WebSocket (protocol v2, f32le mono, 10 ms
// messages at the AudioContext's rate) -> enhanced audio -> AudioWorklet playback.
// A personalized model (/health: speaker_dim > 0) first records ENROLL_SECONDS of the user
// alone and sends them in `start` (s16le, base64); the server embeds them and keeps that speaker.
// window.speechnormStats exposes the counters (the end-to-end test reads them).
const ENROLL_SECONDS = 5;
const $ = (id) => document.getElementById(id);
const stats = (window.speechnormStats = { state: "idle", sentSamples: 0, receivedSamples: 0, receivedSumSquares: 0, errors: [],
                                          enrolledSeconds: 0 });
let context, socket, source, capture, playback, pending = [], pendingLength = 0, sentTimes = [], rtts = [];
let enrolling = null;  // while recording the enrollment: { blocks, length, done }

function base64S16(blocks, length) {  // float blocks -> base64 of little-endian 16-bit PCM
  const bytes = new Uint8Array(2 * length);
  const view = new DataView(bytes.buffer);
  let offset = 0;
  for (const block of blocks) {
    for (let i = 0; i < block.length && offset < bytes.length; i++, offset += 2) {
      view.setInt16(offset, Math.max(-32768, Math.min(32767, Math.round(block[i] * 32768))), true);
    }
  }
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function enroll(seconds) {  // resolves with the captured samples once `seconds` of microphone are in
  return new Promise((resolve) => { enrolling = { blocks: [], length: 0, target: Math.round(seconds * context.sampleRate), resolve }; });
}

function rms(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return samples.length ? Math.sqrt(sum / samples.length) : 0;
}

function meter(id, level) {
  const db = 20 * Math.log10(level + 1e-9);
  $(id).style.width = `${Math.max(0, Math.min(100, (db + 70) / 70 * 100))}%`;
}

function setStatus(text) { $("status").textContent = text; stats.state = text; }

async function start() {
  $("start").disabled = true;
  context = new AudioContext();
  await context.audioWorklet.addModule("/static/worklet.js");
  const media = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  source = context.createMediaStreamSource(media);
  capture = new AudioWorkletNode(context, "capture");
  playback = new AudioWorkletNode(context, "playback", { outputChannelCount: [2] });
  playback.connect(context.destination);
  source.connect(capture);
  const hop = Math.round(context.sampleRate / 100);
  const health = await (await fetch("/health")).json();
  const startMessage = { type: "start", sample_rate: context.sampleRate, channels: 1, format: "f32le" };
  capture.port.onmessage = (event) => recordEnrollment(event.data);
  if (health.model && health.model.speaker_dim > 0) {
    setStatus(`enrolling: speak alone for ${ENROLL_SECONDS} s`);
    const recorded = await enroll(ENROLL_SECONDS);
    stats.enrolledSeconds = recorded.length / context.sampleRate;
    Object.assign(startMessage, { protocol: 2, speaker: { audio: base64S16(recorded.blocks, recorded.length),
                                                          sample_rate: context.sampleRate, format: "s16le" } });
    setStatus("enrolled; starting");
  }
  socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => socket.send(JSON.stringify(startMessage));
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "ready") {
        const who = message.speaker ? `, personalized: ${message.speaker.speech_seconds} s of your speech enrolled` : "";
        $("model").textContent = `${message.model} (latency ${message.latency_ms} ms${who})`;
        setStatus(`streaming at ${context.sampleRate} Hz`);
      } else if (message.type === "error") {
        stats.errors.push(message.code);
        setStatus(`server error ${message.code}: ${message.message}`);
      }
      return;
    }
    const enhanced = new Float32Array(event.data);
    const sent = sentTimes.shift();
    if (sent !== undefined) { rtts.push(performance.now() - sent); if (rtts.length > 100) rtts.shift(); }
    stats.receivedSamples += enhanced.length;
    for (let i = 0; i < enhanced.length; i++) stats.receivedSumSquares += enhanced[i] * enhanced[i];
    meter("out-level", rms(enhanced));
    if (!$("bypass").checked && enhanced.length) playback.port.postMessage(enhanced);
  };
  socket.onclose = (event) => setStatus(`connection closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
  capture.port.onmessage = (event) => {
    const block = event.data;
    meter("in-level", rms(block));
    if ($("bypass").checked) playback.port.postMessage(block);
    pending.push(block);
    pendingLength += block.length;
    while (pendingLength >= hop && socket.readyState === WebSocket.OPEN) {
      const message = new Float32Array(hop);
      let filled = 0;
      while (filled < hop) {
        const head = pending[0];
        const n = Math.min(hop - filled, head.length);
        message.set(head.subarray(0, n), filled);
        filled += n;
        if (n === head.length) pending.shift(); else pending[0] = head.subarray(n);
      }
      pendingLength -= hop;
      sentTimes.push(performance.now());
      socket.send(message.buffer);
      stats.sentSamples += hop;
    }
  };
  $("stop").disabled = false;
}

function recordEnrollment(block) {  // the microphone before the stream starts: the enrollment, if one is wanted
  meter("in-level", rms(block));
  if (!enrolling || enrolling.length >= enrolling.target) return;
  enrolling.blocks.push(block.slice());
  enrolling.length += block.length;
  if (enrolling.length >= enrolling.target) { const done = enrolling; enrolling = null; done.resolve(done); }
}

function stop() {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "stop" }));
  if (socket) socket.close();
  if (context) context.close();
  $("start").disabled = false;
  $("stop").disabled = true;
  setStatus("stopped");
}

setInterval(() => {
  const rate = context ? context.sampleRate : 48000;
  $("sent").textContent = `${(stats.sentSamples / rate).toFixed(1)} s`;
  $("received").textContent = `${(stats.receivedSamples / rate).toFixed(1)} s`;
  if (rtts.length) $("rtt").textContent = `${[...rtts].sort((a, b) => a - b)[rtts.length >> 1].toFixed(1)} ms`;
}, 250);

$("start").onclick = () => start().catch((err) => { setStatus(`cannot start: ${err}`); stats.errors.push(String(err)); $("start").disabled = false; });
$("stop").onclick = stop;
$("bypass").onchange = () => playback && playback.port.postMessage("clear");
if (new URLSearchParams(location.search).has("autostart")) $("start").click();
