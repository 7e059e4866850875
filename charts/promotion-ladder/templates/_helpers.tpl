{{/* Names and labels shared by every object of the chart. */}}

{{- define "ladder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ladder.fullname" -}}
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

{{- define "ladder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ladder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ladder.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ladder.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: promotion-ladder
{{- end -}}

{{- define "ladder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ladder.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: set the name of an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ladder.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The operator's RBAC rules (see clusterrole.yaml): namespaced, and cluster-scoped. */}}
{{- define "ladder.namespacedRules" -}}
# Watch and read ladders; their status is the durable record.
- apiGroups: [ladder.promotion.dev]
  resources: [promotionladders]
  verbs: [get, list, watch]
- apiGroups: [ladder.promotion.dev]
  resources: [promotionladders/status]
  verbs: [get, patch, update]
# One Job per cell; a Job of a cell no longer wanted is deleted (no deletecollection).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# A multi-node cell's headless Service (rendezvous DNS), owned by the ladder like its Jobs.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create]
# Results are read from trainer pods' annotations. patch: RBAC lets the operator grant the
# trainer Role "get, patch pods" only if it holds those verbs itself. delete: a Pod still
# running far past its deadline (a lost exit, a dead node) is ended.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, delete]
# One operator at a time: the leader Lease, in the first watched namespace or the release's.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
# An Event for each stage decision and each rejected result (Kopf and kubectl use either API);
# list: why a cell's Job has no Pod is only in the Job controller's FailedCreate Event.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, list]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# The trainer identity in each ladder's namespace: created if absent, never modified.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
# Kueue: a queued cell's Workload says why it waits (a missing queue, a quota too small for one
# cell); listed to name the queue in a condition and an Event. Harmless without Kueue.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list]
{{- end }}
{{- define "ladder.clusterRules" -}}
# Kopf: resource discovery, and namespace watching.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
# Admission: warn when no node matches a host block. Read only.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list]
{{- end }}
