{{- define "tokenbudget.name" -}}tokenbudget-operator{{- end -}}

{{- define "tokenbudget.labels" -}}
app.kubernetes.io/name: tokenbudget
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tokenbudget.selector" -}}
app.kubernetes.io/name: tokenbudget
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokenbudget.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}


{{- /* Who makes the webhook's certificate (values.yaml: webhook): Operator (default), CertManager or Secret (yours). */ -}}
{{- define "tokenbudget.tlsMode" -}}
{{- if .Values.webhook.certManager.enabled -}}CertManager
{{- else if .Values.webhook.caBundle -}}Secret
{{- else -}}Operator
{{- end -}}
{{- end -}}
