// Validates Kubernetes objects against the JSON schemas that the npm
// packages kubernetes-models (Kubernetes' own API, from its OpenAPI
// document), @kubernetes-models/prometheus-operator and
// @kubernetes-models/traefik (from those projects' CRDs) compile in.
//
//   node validate.mjs FILE...     (multi-document YAML; "-" is stdin)
//
// Prints one JSON line per object:
//   {"file":…,"index":N,"apiVersion":…,"kind":…,"name":…,"result":"valid"}
//   … "result":"invalid","errors":["data/spec/… must be integer", …]
//   … "result":"no-schema"   (a kind none of the packages knows)
// and exits 0; 1 only when a file cannot be read or parsed. The caller
// (tests/deploy/test_manifests.py) decides what is acceptable.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

// apiVersion group -> module prefix. The core group ("v1") has no group.
const PACKAGES = {
	"monitoring.coreos.com": "@kubernetes-models/prometheus-operator/monitoring.coreos.com",
	"traefik.io": "@kubernetes-models/traefik/traefik.io",
};

async function modelFor(apiVersion, kind) {
	const slash = apiVersion.indexOf("/");
	const group = slash < 0 ? "" : apiVersion.slice(0, slash);
	const version = slash < 0 ? apiVersion : apiVersion.slice(slash + 1);
	const prefix = PACKAGES[group] ?? (group === "" ? "kubernetes-models" : `kubernetes-models/${group}`);
	try {
		const mod = await import(`${prefix}/${version}/${kind}`);
		return mod[kind] ?? null;
	} catch (e) {
		if (e.code === "ERR_PACKAGE_PATH_NOT_EXPORTED" || e.code === "ERR_MODULE_NOT_FOUND")
			return null;
		throw e;
	}
}

function errorsOf(e) {
	if (Array.isArray(e.errors))
		return e.errors.map((x) => `data${x.instancePath ?? ""} ${x.message ?? JSON.stringify(x)}`);
	return [String(e.message ?? e)];
}

let failed = false;
for (const file of process.argv.slice(2)) {
	let docs;
	try {
		const text = readFileSync(file === "-" ? 0 : file, "utf8");
		docs = parseAllDocuments(text);
	} catch (e) {
		console.error(`validate.mjs: ${file}: ${e.message}`);
		failed = true;
		continue;
	}
	let index = 0;
	for (const doc of docs) {
		if (doc.errors.length) {
			console.error(`validate.mjs: ${file}: ${doc.errors[0].message}`);
			failed = true;
			break;
		}
		const obj = doc.toJS();
		if (obj === null || obj === undefined)
			continue;
		// kustomize writes long Secret data as a block with line breaks;
		// the API server's base64 decoder (Go's) skips \r and \n, so do
		// the same before checking the "byte" format.
		if (obj.kind === "Secret" && obj.data && typeof obj.data === "object")
			for (const k of Object.keys(obj.data))
				if (typeof obj.data[k] === "string")
					obj.data[k] = obj.data[k].replace(/[\r\n]/g, "");
		const out = {
			file,
			index: index++,
			apiVersion: obj.apiVersion,
			kind: obj.kind,
			name: obj.metadata?.name,
		};
		if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
			out.result = "invalid";
			out.errors = ["apiVersion and kind must be strings"];
		} else {
			const Model = await modelFor(obj.apiVersion, obj.kind);
			if (!Model) {
				out.result = "no-schema";
			} else {
				try {
					new Model(obj).validate();
					out.result = "valid";
				} catch (e) {
					out.result = "invalid";
					out.errors = errorsOf(e);
				}
			}
		}
		console.log(JSON.stringify(out));
	}
}
process.exit(failed ? 1 : 0);
