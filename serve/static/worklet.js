// Two AudioWorklet processors: "capture" posts the microphone's first channel to the page in
// render quanta; "playback" plays what the page pushes (enhanced audio, or the raw microphone
// when bypassed) from a queue, with silence while the queue is empty.
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}

class Playback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.offset = 0;
    this.port.onmessage = (event) => {
      if (event.data === "clear") { this.queue = []; this.offset = 0; return; }
      this.queue.push(event.data);
      while (this.queue.length > 200) this.queue.shift(); // never more than ~2 s behind
    };
  }
  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.queue.length) {
      const head = this.queue[0];
      const n = Math.min(out.length - i, head.length - this.offset);
      out.set(head.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      if (this.offset === head.length) { this.queue.shift(); this.offset = 0; }
    }
    out.fill(0, i);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}

registerProcessor("capture", Capture);
registerProcessor("playback", Playback);
