{{/*
Pod templates of the coordinator and the workers, used by the Deployment and StatefulSet and, with
workers.leaderWorkerSet.enabled, by the LeaderWorkerSet (coordinator = leader, workers = group).
*/}}

{{- define "switchyard.coordinatorPodTemplate" -}}
{{- $c := .Values.coordinator -}}
metadata:
  labels:
    {{- include "switchyard.componentLabels" (list . "coordinator") | nindent 4 }}
    {{- with $c.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/model: {{ toJson .Values.model | sha256sum | trunc 16 }}
    {{- with $c.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- include "switchyard.podCommon" . | nindent 2 }}
  terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
  {{- with (include "switchyard.initContainers" .) }}
  initContainers:
    {{- . | trim | nindent 4 }}
  {{- end }}
  containers:
    - name: coordinator
      image: {{ include "switchyard.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["switchyard-coordinator"]
      {{- with $c.extraArgs }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        {{- include "switchyard.commonEnv" . | nindent 8 }}
        - name: SWITCHYARD_GRPC_PORT
          value: {{ $c.grpcPort | quote }}
        - name: SWITCHYARD_CONTROL_PORT
          value: {{ $c.controlPort | quote }}
        - name: SWITCHYARD_HTTP_PORT
          value: {{ $c.httpPort | quote }}
        {{- with $c.maxQueuedRequests }}
        - name: SWITCHYARD_MAX_QUEUED_REQUESTS
          value: {{ . | quote }}
        {{- end }}
        {{- with $c.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: {{ $c.grpcPort }}
          protocol: TCP
        - name: control
          containerPort: {{ $c.controlPort }}
          protocol: TCP
        - name: http
          containerPort: {{ $c.httpPort }}
          protocol: TCP
      startupProbe:
        grpc:
          port: {{ $c.grpcPort }}
        {{- toYaml $c.probes.startup | nindent 8 }}
      readinessProbe:
        grpc:
          port: {{ $c.grpcPort }}
          service: {{ $c.probes.readinessGrpcService | quote }}
        {{- toYaml $c.probes.readiness | nindent 8 }}
      livenessProbe:
        tcpSocket:
          port: http
        {{- toYaml $c.probes.liveness | nindent 8 }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      securityContext:
        {{- include "switchyard.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        {{- include "switchyard.volumeMounts" . | trim | nindent 8 }}
  volumes:
    {{- include "switchyard.volumes" . | trim | nindent 4 }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "switchyard.workerPodTemplate" -}}
{{- $w := .Values.workers -}}
{{- $backend := include "switchyard.backend" . -}}
metadata:
  labels:
    {{- include "switchyard.componentLabels" (list . "worker") | nindent 4 }}
    {{- with $w.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/model: {{ toJson .Values.model | sha256sum | trunc 16 }}
    {{- with $w.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- include "switchyard.podCommon" . | nindent 2 }}
  terminationGracePeriodSeconds: {{ $w.terminationGracePeriodSeconds }}
  {{- if and .Values.gpu.enabled .Values.gpu.runtimeClassName }}
  runtimeClassName: {{ .Values.gpu.runtimeClassName }}
  {{- end }}
  {{- with (include "switchyard.initContainers" .) }}
  initContainers:
    {{- . | trim | nindent 4 }}
  {{- end }}
  containers:
    - name: worker
      image: {{ include "switchyard.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["switchyard-worker"]
      {{- with $w.extraArgs }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        {{- include "switchyard.commonEnv" . | nindent 8 }}
        - name: SWITCHYARD_BACKEND
          value: {{ $backend | quote }}
        - name: SWITCHYARD_COORDINATOR_ADDRESS
          value: {{ include "switchyard.coordinatorControlAddress" . | quote }}
        - name: SWITCHYARD_ADVERTISE_HOST
          value: "$(POD_IP)"
        - name: SWITCHYARD_CONTROL_PORT
          value: {{ $w.controlPort | quote }}
        - name: SWITCHYARD_HTTP_PORT
          value: {{ $w.httpPort | quote }}
        - name: SWITCHYARD_METRICS_PER_EXPERT
          value: {{ .Values.metrics.perExpert | quote }}
        {{- with $w.kvCacheMb }}
        - name: SWITCHYARD_KV_CACHE_MB
          value: {{ . | quote }}
        {{- end }}
        {{- with $w.cpuThreads }}
        - name: OPENBLAS_NUM_THREADS
          value: {{ . | quote }}
        - name: OMP_NUM_THREADS
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.gloo.socketIfname }}
        - name: GLOO_SOCKET_IFNAME
          value: {{ . | quote }}
        {{- end }}
        {{- if eq $backend "cuda" }}
        {{- with .Values.nccl.socketIfname }}
        - name: NCCL_SOCKET_IFNAME
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.nccl.ibHca }}
        - name: NCCL_IB_HCA
          value: {{ . | quote }}
        {{- end }}
        - name: NCCL_DEBUG
          value: {{ .Values.nccl.debug | quote }}
        {{- range $name, $value := .Values.nccl.extraEnv }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
        {{- end }}
        {{- with $w.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: control
          containerPort: {{ $w.controlPort }}
          protocol: TCP
        - name: http
          containerPort: {{ $w.httpPort }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /health
          port: http
        {{- toYaml $w.probes.startup | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /health
          port: http
        {{- toYaml $w.probes.readiness | nindent 8 }}
      livenessProbe:
        tcpSocket:
          port: http
        {{- toYaml $w.probes.liveness | nindent 8 }}
      resources:
        {{- $res := deepCopy $w.resources }}
        {{- if .Values.gpu.enabled }}
        {{- $limits := default dict $res.limits }}
        {{- $requests := default dict $res.requests }}
        {{- $_ := set $limits .Values.gpu.resourceName (int $w.gpusPerWorker) }}
        {{- $_ := set $requests .Values.gpu.resourceName (int $w.gpusPerWorker) }}
        {{- if .Values.rdma.enabled }}
        {{- $_ := set $limits .Values.rdma.resourceName (int .Values.rdma.count) }}
        {{- $_ := set $requests .Values.rdma.resourceName (int .Values.rdma.count) }}
        {{- end }}
        {{- $_ := set $res "limits" $limits }}
        {{- $_ := set $res "requests" $requests }}
        {{- end }}
        {{- toYaml $res | nindent 8 }}
      securityContext:
        {{- include "switchyard.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        {{- include "switchyard.volumeMounts" . | trim | nindent 8 }}
  volumes:
    {{- include "switchyard.volumes" . | trim | nindent 4 }}
  {{- with $w.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := $w.tolerations }}
  {{- if .Values.gpu.enabled }}
  {{- $tolerations = concat .Values.gpu.tolerations $w.tolerations }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
