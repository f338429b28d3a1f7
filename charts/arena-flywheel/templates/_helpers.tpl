{{/*
Names and labels.
*/}}
{{- define "arena.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-wide prefix; kept short enough for "-inference-<model>" to fit a DNS label. */}}
{{- define "arena.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 30 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "arena.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "arena.selectorLabels" -}}
app.kubernetes.io/name: {{ include "arena.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "arena.labels" -}}
helm.sh/chart: {{ include "arena.chart" . }}
{{ include "arena.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: arena-flywheel
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one workload. Takes (dict "root" $ "w" $workload). */}}
{{- define "arena.workloadSelectorLabels" -}}
{{ include "arena.selectorLabels" .root }}
app.kubernetes.io/component: {{ .w.component }}
{{- if .w.model }}
arena-flywheel.io/model: {{ .w.model }}
{{- end }}
{{- end }}

{{- define "arena.workloadLabels" -}}
{{ include "arena.labels" .root }}
app.kubernetes.io/component: {{ .w.component }}
{{- if .w.model }}
arena-flywheel.io/model: {{ .w.model }}
{{- end }}
{{- end }}

{{/*
Deep merge of two maps: keys of "override" win, maps merge recursively, lists and scalars replace
(false and 0 included). Takes (dict "base" $map "override" $map); returns YAML.
*/}}
{{- define "arena.merge" -}}
{{- $merged := deepCopy (.base | default dict) }}
{{- range $key, $value := (.override | default dict) }}
{{- $current := get $merged $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $current) }}
{{- $_ := set $merged $key (include "arena.merge" (dict "base" $current "override" $value) | fromYaml) }}
{{- else }}
{{- $_ := set $merged $key $value }}
{{- end }}
{{- end }}
{{- toYaml $merged }}
{{- end }}

{{/*
The workloads: one per enabled component, except inference with declared models, which has one
per model. Each: name (the suffix of every object name), component, model, config (the merged
values). Returns YAML {"workloads": [...]}; use with fromYaml.
*/}}
{{- define "arena.workloads" -}}
{{- $workloads := list }}
{{- range $component := keys .Values.components | sortAlpha }}
{{- $config := include "arena.merge" (dict "base" $.Values.defaults "override" (get $.Values.components $component)) | fromYaml }}
{{- if $config.enabled }}
{{- if and (eq $component "inference") $config.models }}
{{- $seen := dict }}
{{- range $model := $config.models }}
{{- if hasKey $seen $model.name }}
{{- fail (printf "components.inference.models: the name %q is declared twice" $model.name) }}
{{- end }}
{{- $_ := set $seen $model.name true }}
{{- $perModel := pick $model "replicas" "resources" "settings" "secrets" "nodeSelector" "tolerations" "affinity" "keda" "autoscaling" "podAnnotations" "env" }}
{{- $modelConfig := include "arena.merge" (dict "base" $config "override" $perModel) | fromYaml }}
{{- $gpus := $model.gpus | default $model.tensorParallelSize | default 1 }}
{{- $_ := set $modelConfig "gpu" (dict "count" $gpus "resourceName" $config.gpu.resourceName) }}
{{- $_ := set $modelConfig "shm" (merge (dict "enabled" true) $config.shm) }}
{{- $_ := set $modelConfig "modelSpec" $model }}
{{- $workloads = append $workloads (dict "name" (printf "inference-%s" $model.name) "component" "inference" "model" $model.name "config" $modelConfig) }}
{{- end }}
{{- else }}
{{- $workloads = append $workloads (dict "name" $component "component" $component "model" "" "config" $config) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "workloads" $workloads) }}
{{- end }}

{{/* The object name of a workload. Takes (dict "root" $ "w" $workload). */}}
{{- define "arena.workloadName" -}}
{{- printf "%s-%s" (include "arena.fullname" .root) .w.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Whether a workload may run more than one replica (PDB, HPA, KEDA). */}}
{{- define "arena.scalable" -}}
{{- $c := .w.config }}
{{- if or (gt (int $c.replicas) 1) $c.autoscaling.enabled $c.keda.enabled }}true{{ end }}
{{- end }}

{{/* registry/repository:tag@digest. Takes (dict "root" $ "image" $image). */}}
{{- define "arena.image" -}}
{{- $image := .image }}
{{- $ref := $image.repository }}
{{- if $image.registry }}
{{- $ref = printf "%s/%s" $image.registry $image.repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $ref $image.digest }}
{{- else }}
{{- printf "%s:%s" $ref (toString ($image.tag | default .root.Chart.AppVersion)) }}
{{- end }}
{{- end }}

{{/* host:port of a component's gRPC Service, or nothing when it is disabled. Takes (dict "root" $ "component" $name). */}}
{{- define "arena.serviceTarget" -}}
{{- $root := .root }}
{{- range $w := (include "arena.workloads" $root | fromYaml).workloads }}
{{- if and (eq $w.component $.component) (not $w.model) }}
{{- printf "%s.%s.svc:%v" (include "arena.workloadName" (dict "root" $root "w" $w)) $root.Release.Namespace $root.Values.ports.grpc }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The inference Service the judge calls: the model server of a model named "judge" when one is
declared, else the first model server, else the single inference Service. Override with
components.judge.settings.judge.inference_target.
*/}}
{{- define "arena.judgeInferenceTarget" -}}
{{- $root := . }}
{{- $servers := list }}
{{- $chosen := "" }}
{{- range $w := (include "arena.workloads" $root | fromYaml).workloads }}
{{- if eq $w.component "inference" }}
{{- $target := printf "%s.%s.svc:%v" (include "arena.workloadName" (dict "root" $root "w" $w)) $root.Release.Namespace $root.Values.ports.grpc }}
{{- $servers = append $servers $target }}
{{- if eq $w.model "judge" }}{{ $chosen = $target }}{{ end }}
{{- end }}
{{- end }}
{{- $chosen | default (first $servers) | default "" }}
{{- end }}

{{/*
NATS.
*/}}
{{- define "arena.nats.name" -}}
{{- printf "%s-nats" (include "arena.fullname" .) }}
{{- end }}

{{- define "arena.nats.bundled" -}}
{{- if eq .Values.nats.mode "bundled" }}true{{ end }}
{{- end }}

{{- define "arena.nats.url" -}}
{{- if include "arena.nats.bundled" . }}
{{- printf "nats://%s.%s.svc:4222" (include "arena.nats.name" .) .Release.Namespace }}
{{- else }}
{{- required "nats.external.url is required when nats.mode is external" .Values.nats.external.url }}
{{- end }}
{{- end }}

{{- define "arena.nats.streamReplicas" -}}
{{- if include "arena.nats.bundled" . }}
{{- .Values.nats.bundled.replicas }}
{{- else }}
{{- .Values.nats.external.streamReplicas }}
{{- end }}
{{- end }}

{{/* The TCP ports of the NATS URLs (for egress rules). Returns YAML {"ports": [...]}. */}}
{{- define "arena.nats.ports" -}}
{{- $ports := list }}
{{- range $server := splitList "," (include "arena.nats.url" .) }}
{{- $hostPort := regexReplaceAll "^[a-z]+://" (trim $server) "" | trimSuffix "/" }}
{{- $port := 4222 }}
{{- if contains ":" $hostPort }}
{{- $port = int (last (splitList ":" $hostPort)) }}
{{- end }}
{{- $ports = append $ports $port }}
{{- end }}
{{- toYaml (dict "ports" ($ports | uniq)) }}
{{- end }}

{{- define "arena.nats.monitoringEndpoint" -}}
{{- if include "arena.nats.bundled" . }}
{{- printf "%s.%s.svc:8222" (include "arena.nats.name" .) .Release.Namespace }}
{{- else }}
{{- .Values.nats.external.monitoringEndpoint }}
{{- end }}
{{- end }}

{{/*
Settings -> ARENA_* environment variables.
*/}}

{{/* An env value as text: whole numbers without an exponent, lists as JSON. */}}
{{- define "arena.envValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if kindIs "float64" $v }}
{{- if eq $v (float64 (int64 $v)) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "slice" $v) (kindIs "map" $v) }}
{{- toJson $v }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/*
Flattens a settings map into {"ARENA_A__B": "value"}: maps are groups and recurse, null leaves are
dropped. Takes (dict "prefix" "ARENA" "settings" $map); returns YAML.
*/}}
{{- define "arena.flattenSettings" -}}
{{- $out := dict }}
{{- range $key, $value := .settings }}
{{- $name := printf "%s%s%s" $.prefix (ternary "_" "__" (eq $.prefix "ARENA")) (upper $key) }}
{{- if kindIs "map" $value }}
{{- $out = merge $out (include "arena.flattenSettings" (dict "prefix" $name "settings" $value) | fromYaml) }}
{{- else if not (kindIs "invalid" $value) }}
{{- $_ := set $out $name (include "arena.envValue" $value) }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Flattens a secrets map into {"ARENA_A__B": {"existingSecret": ..., "key": ...}}. A leaf is a map
with existingSecret. Takes (dict "prefix" "ARENA" "secrets" $map); returns YAML.
*/}}
{{- define "arena.flattenSecrets" -}}
{{- $out := dict }}
{{- range $key, $value := .secrets }}
{{- $name := printf "%s%s%s" $.prefix (ternary "_" "__" (eq $.prefix "ARENA")) (upper $key) }}
{{- if hasKey $value "existingSecret" }}
{{- $_ := set $out $name $value }}
{{- else }}
{{- $out = merge $out (include "arena.flattenSecrets" (dict "prefix" $name "secrets" $value) | fromYaml) }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Settings the chart derives from other values; a component's own settings override them. Maps that
are values rather than groups (labels, node selectors) go as JSON strings.
Takes (dict "root" $ "w" $workload); returns YAML.
*/}}
{{- define "arena.derivedSettings" -}}
{{- $root := .root }}
{{- $c := .w.config }}
{{- $derived := dict }}
{{- if .w.model }}
{{- $m := $c.modelSpec }}
{{- $spec := dict "name" $m.name "backend" "vllm" "uri" ($m.uri | default $m.name) "tensor_parallel_size" ($m.tensorParallelSize | default 1) }}
{{- with $m.revision }}{{ $_ := set $spec "revision" . }}{{ end }}
{{- with $m.maxModelLen }}{{ $_ := set $spec "max_model_len" . }}{{ end }}
{{- with $m.gpuMemoryUtilization }}{{ $_ := set $spec "backend_options" (dict "gpu_memory_utilization" .) }}{{ end }}
{{- $_ := set $derived "inference" (dict "models" (list $spec)) }}
{{- end }}
{{- if eq .w.component "judge" }}
{{- with include "arena.judgeInferenceTarget" $root }}
{{- $_ := set $derived "judge" (dict "inference_target" .) }}
{{- end }}
{{- end }}
{{- if eq .w.component "training" }}
{{- $training := dict "runner" $c.runner }}
{{- range $peer := list "judge" "selection" }}
{{- with include "arena.serviceTarget" (dict "root" $root "component" $peer) }}
{{- $_ := set $training (printf "%s_target" $peer) . }}
{{- end }}
{{- end }}
{{- if eq $c.runner "kubernetes" }}
{{- $jobs := $c.jobs }}
{{- $pullSecrets := list }}
{{- range $c.imagePullSecrets }}{{ $pullSecrets = append $pullSecrets .name }}{{ end }}
{{- $secretEnv := dict }}
{{- range $name, $ref := $jobs.secretEnv }}
{{- $_ := set $secretEnv $name (dict "secret" $ref.existingSecret "key" $ref.key) }}
{{- end }}
{{- $kube := dict
  "namespace" $root.Release.Namespace
  "image" (include "arena.image" (dict "root" $root "image" $jobs.image))
  "image_pull_policy" ($jobs.image.pullPolicy | default "IfNotPresent")
  "image_pull_secrets" $pullSecrets
  "service_account" (include "arena.trainingJobServiceAccountName" $root)
  "gpus_per_node" $jobs.gpusPerNode
  "gpu_resource" $c.gpu.resourceName
  "node_selector" (toJson ($jobs.nodeSelector | default dict))
  "tolerations" (toJson ($jobs.tolerations | default list))
  "pod_labels" (include "arena.workloadSelectorLabels" (dict "root" $root "w" (dict "component" "training-job" "model" "")) | fromYaml | toJson)
  "env" (toJson ($jobs.env | default dict))
  "secret_env" (toJson $secretEnv)
  "shm_size" $jobs.shmSize
  "kubeflow" $c.rbac.kubeflow
}}
{{- with $jobs.cpu }}{{ $_ := set $kube "cpu" (toString .) }}{{ end }}
{{- with $jobs.memory }}{{ $_ := set $kube "memory" (toString .) }}{{ end }}
{{- with $jobs.priorityClassName }}{{ $_ := set $kube "priority_class_name" . }}{{ end }}
{{- with $c.podSecurityContext.runAsUser }}{{ $_ := set $kube "run_as_user" . }}{{ end }}
{{- with $c.podSecurityContext.fsGroup }}{{ $_ := set $kube "fs_group" . }}{{ end }}
{{- with $jobs.checkpoints.existingClaim }}
{{- $_ := set $kube "checkpoint_claim" . }}
{{- $_ := set $kube "checkpoint_dir" $jobs.checkpoints.mountPath }}
{{- end }}
{{- $_ := set $training "kubernetes" $kube }}
{{- end }}
{{- $_ := set $derived "training" $training }}
{{- end }}
{{- toYaml $derived }}
{{- end }}

{{/*
Settings only the chart sets (ports, NATS); a component that sets one of them fails the render.
Takes the root context; returns YAML {"ARENA_...": "value"}.
*/}}
{{- define "arena.managedEnv" -}}
{{- $auth := .Values.nats.auth }}
{{- $env := dict
  "ARENA_NATS__URL" (include "arena.nats.url" .)
  "ARENA_NATS__STREAM_REPLICAS" (include "arena.nats.streamReplicas" .)
  "ARENA_GRPC__PORT" (toString .Values.ports.grpc)
  "ARENA_METRICS__PORT" (toString .Values.ports.metrics)
}}
{{- with $auth.user }}
{{- $_ := set $env "ARENA_NATS__USER" . }}
{{- end }}
{{- if $auth.creds.existingSecret }}
{{- $_ := set $env "ARENA_NATS__CREDS_FILE" (printf "/etc/arena/nats-creds/%s" $auth.creds.key) }}
{{- end }}
{{- if $auth.nkeySeed.existingSecret }}
{{- $_ := set $env "ARENA_NATS__NKEY_SEED_FILE" (printf "/etc/arena/nats-nkey/%s" $auth.nkeySeed.key) }}
{{- end }}
{{- with .Values.nats.tls }}
{{- if .existingSecret }}
{{- with .caKey }}{{ $_ := set $env "ARENA_NATS__TLS__CA_FILE" (printf "/etc/arena/nats-tls/%s" .) }}{{ end }}
{{- if and .certKey .keyKey }}
{{- $_ := set $env "ARENA_NATS__TLS__CERT_FILE" (printf "/etc/arena/nats-tls/%s" .certKey) }}
{{- $_ := set $env "ARENA_NATS__TLS__KEY_FILE" (printf "/etc/arena/nats-tls/%s" .keyKey) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* Secret-backed NATS settings: {"ARENA_...": {"existingSecret", "key"}}. */}}
{{- define "arena.managedSecrets" -}}
{{- $out := dict }}
{{- with .Values.nats.auth }}
{{- if .password.existingSecret }}
{{- $_ := set $out "ARENA_NATS__PASSWORD" .password }}
{{- end }}
{{- if .token.existingSecret }}
{{- $_ := set $out "ARENA_NATS__TOKEN" .token }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
The container env of a workload: chart-managed NATS and ports, derived settings overridden by the
component's settings, secrets by reference, then raw env. Takes (dict "root" $ "w" $workload).
*/}}
{{- define "arena.env" -}}
{{- $root := .root }}
{{- $c := .w.config }}
{{- $managed := include "arena.managedEnv" $root | fromYaml }}
{{- if eq .w.component "inference" }}
{{- $_ := set $managed "ARENA_INFERENCE__HTTP_PORT" (ternary (toString $c.openaiHttp.port) "0" $c.openaiHttp.enabled) }}
{{- end }}
{{- $managedSecrets := include "arena.managedSecrets" $root | fromYaml }}
{{- $settings := include "arena.merge" (dict "base" (include "arena.derivedSettings" . | fromYaml) "override" $c.settings) | fromYaml }}
{{- $flat := include "arena.flattenSettings" (dict "prefix" "ARENA" "settings" $settings) | fromYaml }}
{{- $secrets := include "arena.flattenSecrets" (dict "prefix" "ARENA" "secrets" ($c.secrets | default dict)) | fromYaml }}
{{- range $name := concat (keys $flat) (keys $secrets) }}
{{- if or (hasKey $managed $name) (hasKey $managedSecrets $name) }}
{{- fail (printf "components.%s: %s is set by the chart; use ports.*, nats.* or openaiHttp.port instead of settings/secrets" $.w.component $name) }}
{{- end }}
{{- if and (hasKey $flat $name) (hasKey $secrets $name) }}
{{- fail (printf "components.%s: %s is in both settings and secrets" $.w.component $name) }}
{{- end }}
{{- end }}
{{- $grace := 10 }}
{{- if hasKey $flat "ARENA_GRPC__GRACE_SECONDS" }}
{{- $grace = float64 (get $flat "ARENA_GRPC__GRACE_SECONDS") }}
{{- end }}
{{- if lt (float64 $c.terminationGracePeriodSeconds) (addf $grace $c.preStopSleepSeconds 20) }}
{{- fail (printf "components.%s: terminationGracePeriodSeconds %v must cover preStopSleepSeconds (%v) + ARENA_GRPC__GRACE_SECONDS (%v) + 20 s for consumers and the NATS drain" $.w.component $c.terminationGracePeriodSeconds $c.preStopSleepSeconds $grace) }}
{{- end }}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
{{- if eq .w.component "inference" }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" $c.modelCache.mountPath | quote }}
{{- end }}
{{- range $name := keys $managed | sortAlpha }}
- name: {{ $name }}
  value: {{ get $managed $name | quote }}
{{- end }}
{{- range $name := keys $managedSecrets | sortAlpha }}
{{- $ref := get $managedSecrets $name }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.existingSecret | quote }}
      key: {{ $ref.key | quote }}
{{- end }}
{{- range $name := keys $flat | sortAlpha }}
- name: {{ $name }}
  value: {{ get $flat $name | quote }}
{{- end }}
{{- range $name := keys $secrets | sortAlpha }}
{{- $ref := get $secrets $name }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.existingSecret | quote }}
      key: {{ $ref.key | quote }}
      {{- if $ref.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- with $c.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes and mounts shared by every service pod for NATS credentials and TLS. */}}
{{- define "arena.nats.volumes" -}}
{{- with .Values.nats.auth.creds.existingSecret }}
- name: nats-creds
  secret:
    secretName: {{ . | quote }}
    defaultMode: 0440
{{- end }}
{{- with .Values.nats.auth.nkeySeed.existingSecret }}
- name: nats-nkey
  secret:
    secretName: {{ . | quote }}
    defaultMode: 0440
{{- end }}
{{- with .Values.nats.tls.existingSecret }}
- name: nats-tls
  secret:
    secretName: {{ . | quote }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "arena.nats.volumeMounts" -}}
{{- if .Values.nats.auth.creds.existingSecret }}
- name: nats-creds
  mountPath: /etc/arena/nats-creds
  readOnly: true
{{- end }}
{{- if .Values.nats.auth.nkeySeed.existingSecret }}
- name: nats-nkey
  mountPath: /etc/arena/nats-nkey
  readOnly: true
{{- end }}
{{- if .Values.nats.tls.existingSecret }}
- name: nats-tls
  mountPath: /etc/arena/nats-tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
Training RBAC.
*/}}
{{- define "arena.trainingServiceAccountName" -}}
{{- $sa := .Values.components.training.serviceAccount | default dict }}
{{- if $sa.create }}
{{- default (printf "%s-training" (include "arena.fullname" .)) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{- define "arena.trainingJobServiceAccountName" -}}
{{- printf "%s-training-job" (include "arena.fullname" .) }}
{{- end }}

{{/* The training config merged over defaults, or nothing when training is disabled. */}}
{{- define "arena.trainingConfig" -}}
{{- $config := include "arena.merge" (dict "base" .Values.defaults "override" .Values.components.training) | fromYaml }}
{{- if $config.enabled }}
{{- toYaml $config }}
{{- end }}
{{- end }}
