{{/* The chart's name, and names of its objects. */}}
{{- define "tarbox-csi.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tarbox-csi.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "tarbox-csi.labels" -}}
app.kubernetes.io/name: {{ include "tarbox-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tarbox-csi.selector" -}}
app.kubernetes.io/name: {{ include "tarbox-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tarbox-csi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The Secret holding the database URL. */}}
{{- define "tarbox-csi.secretName" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "tarbox-csi.fullname" .)) -}}
{{- end -}}

{{- define "tarbox-csi.databaseEnv" -}}
- name: TARBOX_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "tarbox-csi.secretName" . }}
      key: {{ .Values.database.secretKey }}
{{- with .Values.dataStore.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: accessKeyID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: secretAccessKey
{{- end }}
{{- end -}}
