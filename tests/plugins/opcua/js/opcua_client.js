// An independent OPC UA client (node-opcua) for canbridge's interoperability tier.
//
// usage: node opcua_client.js '<json spec>'
//   spec = {endpoint, pkiRoot, securityPolicy?, securityMode?, user?, password?, steps: [...]}
//   steps: {op: "browse", path: ["CANBridge", "demo", ...]}          -> names of the children
//          {op: "read", nodeId: "demo.MotorStatus.MotorSpeed"}        -> value, status, timestamps
//          {op: "write", nodeId, dataType: "UInt16", value}           -> status code name
//          {op: "subscribe", nodeId, count, timeoutMs}                -> changes (prints "subscribed" first)
//          {op: "call", objectId, methodId, args: [[dataType, value], ...]}
// Node ids without "ns=" are strings in the urn:canbridge namespace. Every result is one JSON line on
// stdout; a connection or session failure prints {"error": <status name or message>} and exits 1.
"use strict";

const {
    OPCUAClient,
    MessageSecurityMode,
    SecurityPolicy,
    AttributeIds,
    DataType,
    TimestampsToReturn,
    ClientSubscription,
    ClientMonitoredItem,
    UserTokenType,
    NodeClass,
} = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

function out(obj) {
    process.stdout.write(
        JSON.stringify(obj, (_k, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n"
    );
}

function plain(v) {
    // node-opcua values (ExtensionObjects, LocalizedText, Int64 arrays) as plain JSON
    if (v === null || v === undefined) return null;
    if (Array.isArray(v) || ArrayBuffer.isView(v)) return Array.from(v, plain);
    if (v instanceof Date) return v.toISOString();
    if (typeof v === "object") {
        if (typeof v.toJSON === "function") return v.toJSON();
        const o = {};
        for (const k of Object.keys(v)) o[k] = plain(v[k]);
        return o;
    }
    return v;
}

async function main() {
    const spec = JSON.parse(process.argv[2]);
    const certificateManager = new OPCUACertificateManager({
        rootFolder: spec.pkiRoot,
        automaticallyAcceptUnknownCertificate: true, // trust the server under test
    });
    await certificateManager.initialize();
    const client = OPCUAClient.create({
        applicationName: "canbridge-interop",
        securityMode: MessageSecurityMode[spec.securityMode || "None"],
        securityPolicy: SecurityPolicy[spec.securityPolicy || "None"],
        endpointMustExist: false,
        connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
        clientCertificateManager: certificateManager,
        requestedSessionTimeout: 30000,
    });
    let session;
    try {
        await client.connect(spec.endpoint);
        const identity = spec.user
            ? { type: UserTokenType.UserName, userName: spec.user, password: spec.password }
            : { type: UserTokenType.Anonymous };
        session = await client.createSession(identity);
    } catch (err) {
        const m = /Bad[A-Za-z]+/.exec(String(err && err.message));
        out({ error: m ? m[0] : String(err && err.message) });
        try { await client.disconnect(); } catch (_e) { /* already closed */ }
        process.exit(1);
    }
    const nsArray = (await session.read({ nodeId: "ns=0;i=2255", attributeId: AttributeIds.Value })).value.value;
    const ns = nsArray.indexOf("urn:canbridge");
    const nid = (s) => (s.startsWith("ns=") || s.startsWith("i=") ? s : `ns=${ns};s=${s}`);
    out({ connected: true, namespaceIndex: ns });

    for (const step of spec.steps) {
        if (step.op === "browse") {
            let node = "ns=0;i=85"; // Objects
            let children = [];
            for (const name of [...step.path, null]) {
                const r = await session.browse({ nodeId: node, resultMask: 63, browseDirection: 0 });
                children = r.references.map((ref) => ({
                    name: ref.browseName.name,
                    nodeId: ref.nodeId.toString(),
                    nodeClass: NodeClass[ref.nodeClass],
                }));
                if (name === null) break;
                const hit = children.find((c) => c.name === name);
                if (!hit) { out({ op: "browse", missing: name, children }); children = null; break; }
                node = hit.nodeId;
            }
            if (children) out({ op: "browse", children });
        } else if (step.op === "read") {
            const [dv, dtype] = await session.read([
                { nodeId: nid(step.nodeId), attributeId: AttributeIds.Value },
                { nodeId: nid(step.nodeId), attributeId: AttributeIds.DataType },
            ]);
            out({
                op: "read",
                nodeId: step.nodeId,
                value: plain(dv.value ? dv.value.value : null),
                status: dv.statusCode.name,
                sourceTimestamp: dv.sourceTimestamp ? dv.sourceTimestamp.toISOString() : null,
                dataType: dtype.value && dtype.value.value ? dtype.value.value.toString() : null,
            });
        } else if (step.op === "write") {
            const status = await session.write({
                nodeId: nid(step.nodeId),
                attributeId: AttributeIds.Value,
                value: { value: { dataType: DataType[step.dataType], value: step.value } },
            });
            out({ op: "write", nodeId: step.nodeId, status: status.name });
        } else if (step.op === "call") {
            const r = await session.call({
                objectId: nid(step.objectId),
                methodId: nid(step.methodId),
                inputArguments: step.args.map(([t, v]) => ({ dataType: DataType[t], value: v })),
            });
            out({ op: "call", status: r.statusCode.name, outputs: (r.outputArguments || []).map((a) => plain(a.value)) });
        } else if (step.op === "subscribe") {
            const sub = ClientSubscription.create(session, {
                requestedPublishingInterval: 50,
                requestedLifetimeCount: 600,
                requestedMaxKeepAliveCount: 20,
                maxNotificationsPerPublish: 1000,
                publishingEnabled: true,
                priority: 1,
            });
            const changes = [];
            const item = ClientMonitoredItem.create(
                sub,
                { nodeId: nid(step.nodeId), attributeId: AttributeIds.Value },
                { samplingInterval: 50, discardOldest: true, queueSize: 1 },
                TimestampsToReturn.Both
            );
            await new Promise((resolve) => {
                const timer = setTimeout(resolve, step.timeoutMs || 5000);
                let announced = false;
                item.on("changed", (dv) => {
                    changes.push({ value: plain(dv.value ? dv.value.value : null), status: dv.statusCode.name });
                    if (!announced) { announced = true; out({ event: "subscribed" }); }
                    else { out({ event: "changed", value: plain(dv.value ? dv.value.value : null) }); }
                    if (changes.length >= step.count) { clearTimeout(timer); resolve(); }
                });
            });
            await sub.terminate();
            out({ op: "subscribe", changes });
        }
    }
    await session.close();
    await client.disconnect();
}

main().catch((err) => {
    out({ error: String(err && err.stack ? err.stack : err) });
    process.exit(2);
});
