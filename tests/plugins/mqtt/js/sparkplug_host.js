// An independent Sparkplug primary host for the mqtt-interop tier: Eclipse Tahu's JavaScript codec
// (npm sparkplug-payload) with the npm mqtt client. Prints one JSON line per message received under
// spBv1.0/ (decoded), reads commands as JSON lines on stdin:
//   {"cmd": "state", "online": true}                        the host's retained STATE (3.0 JSON form)
//   {"cmd": "publish", "topic": "...", "payload": {...}}    a Sparkplug payload, encoded by Tahu
"use strict";
const mqtt = require("mqtt");
const sparkplug = require("sparkplug-payload").get("spBv1.0");
const readline = require("readline");

const spec = JSON.parse(process.argv[2]);
const stateTopic = `spBv1.0/STATE/${spec.host_id}`;

function plain(v) {  // Long objects (64-bit fields) and Buffers as JSON-friendly values
  if (v === null || v === undefined) return v;
  if (typeof v === "object" && "low" in v && "high" in v) {
    const n = BigInt.asUintN(32, BigInt(v.high)) * 4294967296n + BigInt.asUintN(32, BigInt(v.low));
    return Number(v.unsigned ? n : BigInt.asIntN(64, n));
  }
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = plain(x);
    return out;
  }
  return v;
}

const client = mqtt.connect(spec.url, {
  clientId: `tahu-host-${process.pid}`, clean: true, reconnectPeriod: 200,
  will: {topic: stateTopic, payload: JSON.stringify({online: false, timestamp: Date.now()}), qos: 1, retain: true},
});
client.on("connect", () => {
  client.subscribe("spBv1.0/#", {qos: 1}, () => {
    console.log(JSON.stringify({connected: true}));
  });
});
client.on("message", (topic, payload) => {
  if (topic.startsWith("spBv1.0/STATE/")) return;
  let decoded;
  try {
    decoded = plain(sparkplug.decodePayload(payload));
  } catch (e) {
    console.log(JSON.stringify({topic, error: String(e)}));
    return;
  }
  console.log(JSON.stringify({topic, payload: decoded}));
});
client.on("error", (e) => console.error(String(e)));

readline.createInterface({input: process.stdin}).on("line", (line) => {
  const c = JSON.parse(line);
  if (c.cmd === "state") {
    client.publish(stateTopic, JSON.stringify({online: c.online, timestamp: Date.now()}), {qos: 1, retain: true},
      () => console.log(JSON.stringify({published: "state", online: c.online})));
  } else if (c.cmd === "publish") {
    client.publish(c.topic, sparkplug.encodePayload(c.payload), {qos: 0},
      () => console.log(JSON.stringify({published: c.topic})));
  }
});
