// Validates rendered Kubernetes objects against the Kubernetes API schemas, as kubeconform -strict
// would (kubeconform is not in Debian; scripts/install-k8s-schemas.sh fetches these from npm):
//   1. kubernetes-models / @kubernetes-models/prometheus-operator: JSON-schema validators compiled
//      from the Kubernetes OpenAPI spec and the prometheus-operator CRDs (types, required fields,
//      enums, int-or-string and quantity formats);
//   2. @kubernetes/client-node's generated models list every field of every built-in type
//      (OpenAPI release-1.36): any field not among them is reported (typos such as readinesProbe,
//      or a field at the wrong level, which the API server would drop or reject).
// LeaderWorkerSet has no published schema package: its pod templates are validated as
// PodTemplateSpecs and its own fields against the leaderworkerset.x-k8s.io/v1 field list below.
//
// Usage: node validate_manifests.mjs <schemas dir from install-k8s-schemas.sh> <objects.json>
// objects.json: a JSON array of objects. Exit 0 when all are valid, 1 otherwise (one line each).

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [schemasDir, objectsPath] = process.argv.slice(2);
if (!schemasDir || !objectsPath) {
  console.error("usage: node validate_manifests.mjs <schemas dir> <objects.json>");
  process.exit(2);
}

// apiVersion/kind -> [validator module under node_modules, client-node model class or null].
const KINDS = {
  "v1/Service": ["kubernetes-models/_schemas/IoK8sApiCoreV1Service.js", "V1Service"],
  "v1/ConfigMap": ["kubernetes-models/_schemas/IoK8sApiCoreV1ConfigMap.js", "V1ConfigMap"],
  "v1/ServiceAccount": ["kubernetes-models/_schemas/IoK8sApiCoreV1ServiceAccount.js", "V1ServiceAccount"],
  "apps/v1/Deployment": ["kubernetes-models/_schemas/IoK8sApiAppsV1Deployment.js", "V1Deployment"],
  "apps/v1/StatefulSet": ["kubernetes-models/_schemas/IoK8sApiAppsV1StatefulSet.js", "V1StatefulSet"],
  "policy/v1/PodDisruptionBudget": [
    "kubernetes-models/_schemas/IoK8sApiPolicyV1PodDisruptionBudget.js", "V1PodDisruptionBudget"],
  "networking.k8s.io/v1/NetworkPolicy": [
    "kubernetes-models/_schemas/IoK8sApiNetworkingV1NetworkPolicy.js", "V1NetworkPolicy"],
  "monitoring.coreos.com/v1/ServiceMonitor": [
    "@kubernetes-models/prometheus-operator/_schemas/ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1ServiceMonitor.js",
    null],
  "monitoring.coreos.com/v1/PrometheusRule": [
    "@kubernetes-models/prometheus-operator/_schemas/ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1PrometheusRule.js",
    null],
};
const POD_TEMPLATE_SPEC = ["kubernetes-models/_schemas/IoK8sApiCoreV1PodTemplateSpec.js", "V1PodTemplateSpec"];

// leaderworkerset.x-k8s.io/v1 LeaderWorkerSet fields (its CRD, v0.6+); the pod templates are
// checked separately. "*" marks a field whose content is not checked here.
const LWS_FIELDS = {
  apiVersion: "*", kind: "*", metadata: "meta",
  spec: {
    replicas: "*", startupPolicy: "*",
    leaderWorkerTemplate: {
      size: "*", restartPolicy: "*", leaderTemplate: "pod", workerTemplate: "pod",
      subGroupPolicy: "*", volumeClaimTemplates: "*",
    },
    rolloutStrategy: {
      type: "*",
      rollingUpdateConfiguration: { maxUnavailable: "*", maxSurge: "*", partition: "*" },
    },
    networkConfig: { subdomainPolicy: "*" },
  },
};

// ---------------------------------------------------------------- client-node field lists
const modelsDir = path.join(schemasDir, "client-node-models");
const typeMaps = new Map();
for (const file of fs.readdirSync(modelsDir)) {
  if (!file.endsWith(".js")) continue;
  const text = fs.readFileSync(path.join(modelsDir, file), "utf8");
  const m = text.match(/^(\w+)\.attributeTypeMap = (\[[\s\S]*?\n\]);/m);
  if (m) typeMaps.set(m[1], JSON.parse(m[2]));
}
if (typeMaps.size < 500) {
  console.error(`validate_manifests: only ${typeMaps.size} client-node models read from ${modelsDir}`);
  process.exit(2);
}

function unknownFields(value, type, where, out) {
  if (value === null || value === undefined) return;
  let m;
  if ((m = type.match(/^Array<(.+)>$/))) {
    if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, m[1], `${where}[${i}]`, out));
    return;
  }
  if ((m = type.match(/^\{ \[key: string\]: (.+); \}$/))) {
    if (typeof value === "object") {
      for (const [k, v] of Object.entries(value)) unknownFields(v, m[1], `${where}.${k}`, out);
    }
    return;
  }
  const fields = typeMaps.get(type);
  if (!fields || typeof value !== "object" || Array.isArray(value)) return;  // scalars, any
  const byName = new Map(fields.map((f) => [f.baseName, f.type]));
  for (const [k, v] of Object.entries(value)) {
    if (!byName.has(k)) {
      out.push(`${where}.${k}: unknown field (not in ${type})`);
    } else {
      unknownFields(v, byName.get(k), `${where}.${k}`, out);
    }
  }
}

// ---------------------------------------------------------------- compiled JSON-schema validators
const validators = new Map();
async function validator(modulePath) {
  if (!validators.has(modulePath)) {
    const file = path.join(schemasDir, "node_modules", modulePath);
    validators.set(modulePath, (await import(pathToFileURL(file).href)).validate);
  }
  return validators.get(modulePath);
}

async function schemaErrors(modulePath, value, where, out) {
  const validate = await validator(modulePath);
  if (!validate(value)) {
    for (const e of validate.errors) {
      out.push(`${where}${e.instancePath.replaceAll("/", ".")}: ${e.keyword} ${JSON.stringify(e.params)}`);
    }
  }
}

async function checkAgainst([modulePath, modelClass], value, where, out) {
  await schemaErrors(modulePath, value, where, out);
  if (modelClass) unknownFields(value, modelClass, where, out);
}

async function checkLws(value, fields, where, out) {
  if (typeof value !== "object" || value === null) {
    out.push(`${where}: expected an object`);
    return;
  }
  for (const [k, v] of Object.entries(value)) {
    const rule = fields[k];
    if (rule === undefined) out.push(`${where}.${k}: unknown LeaderWorkerSet field`);
    else if (rule === "pod") await checkAgainst(POD_TEMPLATE_SPEC, v, `${where}.${k}`, out);
    else if (rule === "meta") unknownFields(v, "V1ObjectMeta", `${where}.${k}`, out);
    else if (typeof rule === "object") await checkLws(v, rule, `${where}.${k}`, out);
  }
  if (fields === LWS_FIELDS.spec.leaderWorkerTemplate && !value.workerTemplate) {
    out.push(`${where}.workerTemplate: required`);
  }
}

// ---------------------------------------------------------------- main
const objects = JSON.parse(fs.readFileSync(objectsPath, "utf8"));
const problems = [];
for (const obj of objects) {
  const id = `${obj.kind}/${obj.metadata?.name}`;
  const key = `${obj.apiVersion}/${obj.kind}`;
  if (key === "leaderworkerset.x-k8s.io/v1/LeaderWorkerSet") {
    await checkLws(obj, LWS_FIELDS, id, problems);
  } else if (KINDS[key]) {
    await checkAgainst(KINDS[key], obj, id, problems);
  } else {
    problems.push(`${id}: no schema for ${key}; add it to validate_manifests.mjs`);
  }
}
for (const p of problems) console.log(`INVALID ${p}`);
console.log(`validate_manifests: ${objects.length} objects, ${problems.length} problem(s)`);
process.exit(problems.length ? 1 : 0);
