{{/* The name of the release's objects. */}}
{{- define "cairn.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (.Values.nameOverride | default .Chart.Name) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (.Values.nameOverride | default .Chart.Name) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "cairn.labels" -}}
app.kubernetes.io/name: {{ .Values.nameOverride | default .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels that select the controller pods. */}}
{{- define "cairn.selectorLabels" -}}
app.kubernetes.io/name: {{ .Values.nameOverride | default .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* The rules the controller needs (verified against its requests by controller/tests/chart.rs). */}}
{{- define "cairn.rules" -}}
- apiGroups: ["cairn.dev"]
  resources: ["backupschedules", "restores"]
  verbs: ["list", "watch"]
- apiGroups: ["cairn.dev"]
  resources: ["backuprepositories"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["cairn.dev"]
  resources: ["backups"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: ["cairn.dev"]
  resources: ["backuprepositories/status", "backupschedules/status", "backups/status", "restores/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Why a Job has no pod (admission refused it): its FailedCreate Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
# blockOwnerDeletion on the owner references the controller sets (enforced by
# OwnerReferencesPermissionEnforcement, on by default on OpenShift).
- apiGroups: ["cairn.dev"]
  resources: ["backups/finalizers", "backuprepositories/finalizers", "backupschedules/finalizers", "restores/finalizers"]
  verbs: ["update"]
{{- end -}}
