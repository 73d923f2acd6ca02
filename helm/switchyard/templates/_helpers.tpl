{{/*
Names, labels and the pieces of pod spec the coordinator and the workers share.
*/}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Object names; 63 characters at most, leaving room for the suffixes. */}}
{{- define "switchyard.coordinatorName" -}}
{{- printf "%s-coordinator" (include "switchyard.fullname" . | trunc 48 | trimSuffix "-") -}}
{{- end -}}
{{- define "switchyard.coordinatorControlName" -}}
{{- printf "%s-coordinator-ctl" (include "switchyard.fullname" . | trunc 44 | trimSuffix "-") -}}
{{- end -}}
{{- define "switchyard.workerName" -}}
{{- printf "%s-worker" (include "switchyard.fullname" . | trunc 48 | trimSuffix "-") -}}
{{- end -}}

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every pod of the release carries; the NetworkPolicy admits peers by these. */}}
{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" . }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Usage: include "switchyard.componentSelectorLabels" (list $ "worker") */}}
{{- define "switchyard.componentSelectorLabels" -}}
{{ include "switchyard.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "switchyard.componentLabels" -}}
{{ include "switchyard.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* cpu or cuda: explicit, else from gpu.enabled. */}}
{{- define "switchyard.backend" -}}
{{- if .Values.backend -}}{{ .Values.backend }}{{- else if .Values.gpu.enabled -}}cuda{{- else -}}cpu{{- end -}}
{{- end -}}

{{/* Where workers reach the coordinator's control service: the headless Service, which lists
the coordinator before it is Ready (it becomes Ready only once the workers have joined). */}}
{{- define "switchyard.coordinatorControlAddress" -}}
{{- printf "%s.%s.svc.%s:%d" (include "switchyard.coordinatorControlName" .) .Release.Namespace .Values.clusterDomain (int .Values.coordinator.controlPort) -}}
{{- end -}}

{{- define "switchyard.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{/* Container securityContext; RDMA needs IPC_LOCK to pin memory. */}}
{{- define "switchyard.containerSecurityContext" -}}
{{- $sc := deepCopy .Values.securityContext -}}
{{- if .Values.rdma.enabled -}}
{{- $caps := default dict $sc.capabilities -}}
{{- $_ := set $caps "add" (concat (default list $caps.add) (list "IPC_LOCK")) -}}
{{- $_ := set $sc "capabilities" $caps -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end -}}

{{/* Downward-API variables, the model and the log level: both components. */}}
{{- define "switchyard.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: SWITCHYARD_MODEL
  value: {{ .Values.model.path | quote }}
{{- with .Values.model.servedName }}
- name: SWITCHYARD_SERVED_MODEL_NAME
  value: {{ . | quote }}
{{- end }}
- name: SWITCHYARD_NUM_WORKERS
  value: {{ .Values.workers.replicas | quote }}
- name: SWITCHYARD_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes both components mount: the checkpoint, /dev/shm, /tmp. */}}
{{- define "switchyard.volumes" -}}
{{- $src := .Values.model.source -}}
{{- if eq $src.type "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ $src.pvc.claimName }}
    readOnly: {{ $src.pvc.readOnly }}
{{- else if eq $src.type "hostPath" }}
- name: model
  hostPath:
    path: {{ $src.hostPath.path }}
    type: {{ $src.hostPath.type }}
{{- else if eq $src.type "init" }}
- name: model
  emptyDir:
    {{- with $src.init.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}
{{- if .Values.shm.enabled }}
- name: dshm
  emptyDir:
    medium: Memory
    {{- with .Values.shm.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "switchyard.volumeMounts" -}}
{{- $src := .Values.model.source -}}
{{- if ne $src.type "none" }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
  {{- if and (eq $src.type "pvc") $src.pvc.subPath }}
  subPath: {{ $src.pvc.subPath }}
  {{- end }}
{{- end }}
{{- if .Values.shm.enabled }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The init step that writes the checkpoint into the model emptyDir (model.source.type=init). */}}
{{- define "switchyard.initContainers" -}}
{{- $src := .Values.model.source -}}
{{- if eq $src.type "init" }}
- name: model-init
  image: {{ default (include "switchyard.image" .) $src.init.image | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    {{- toYaml $src.init.command | nindent 4 }}
  {{- with $src.init.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "switchyard.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- toYaml $src.init.resources | nindent 4 }}
  volumeMounts:
    - name: model
      mountPath: {{ .Values.model.mountPath }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end -}}

{{/* Scheduling and pod-level settings shared by both pod templates. */}}
{{- define "switchyard.podCommon" -}}
serviceAccountName: {{ include "switchyard.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- include "switchyard.podSecurityContext" . | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}
