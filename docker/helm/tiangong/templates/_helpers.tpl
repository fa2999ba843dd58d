{{/* Names: the release's full name, truncated for DNS labels. */}}
{{- define "tiangong.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 58 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 58 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tiangong.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tiangong.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: hub
{{- end -}}

{{- define "tiangong.claim" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "tiangong.fullname" .)) -}}
{{- end -}}

{{/* The environment every hub container gets (the init step, web and live alike). */}}
{{- define "tiangong.env" -}}
- name: TIANGONG_HUB_DATA_DIR
  value: /var/lib/tiangong-hub
- name: TIANGONG_ROOT_PASSPHRASE_FILE
  value: /run/secrets/tiangong/root-passphrase
- name: TIANGONG_HUB_ADMIN
  value: {{ .Values.hub.admin | quote }}
{{- if .Values.hub.environment }}
- name: TIANGONG_HUB_ENVIRONMENT
  value: {{ .Values.hub.environment | quote }}
{{- end }}
{{- $live := printf "%s-live" (include "tiangong.fullname" .) }}
- name: TIANGONG_HUB_TLS_NAMES
  value: {{ join " " (concat (list $live (printf "%s.%s.svc" $live .Release.Namespace) (printf "%s.%s.svc.cluster.local" $live .Release.Namespace)) .Values.hub.tlsNames (list "localhost" "127.0.0.1")) | quote }}
{{- if .Values.hub.adminPassword.secretName }}
- name: TIANGONG_HUB_ADMIN_PASSWORD_FILE
  value: /run/secrets/tiangong-admin/admin-password
{{- end }}
{{- if .Values.database.urlSecret.secretName }}
- name: TIANGONG_HUB_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.urlSecret.secretName }}
      key: {{ .Values.database.urlSecret.key }}
{{- end }}
{{- end -}}

{{- define "tiangong.mounts" -}}
- name: data
  mountPath: /var/lib/tiangong-hub
- name: tmp
  mountPath: /tmp
- name: root-passphrase
  mountPath: /run/secrets/tiangong
  readOnly: true
{{- if .Values.hub.adminPassword.secretName }}
- name: admin-password
  mountPath: /run/secrets/tiangong-admin
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tiangong.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* An HTTP probe: (list $ path port scheme). */}}
{{- define "tiangong.httpProbe" -}}
{{- $ := index . 0 -}}
httpGet:
  path: {{ index . 1 }}
  port: {{ index . 2 }}
  scheme: {{ index . 3 }}
initialDelaySeconds: {{ $.Values.probes.initialDelaySeconds }}
periodSeconds: {{ $.Values.probes.periodSeconds }}
timeoutSeconds: {{ $.Values.probes.timeoutSeconds }}
failureThreshold: {{ $.Values.probes.failureThreshold }}
{{- end -}}
