{{/* The release's full name, capped at 63 characters (a DNS label). */}}
{{- define "rigging.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rigging.selectorLabels" -}}
app.kubernetes.io/name: rigging-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rigging.labels" -}}
{{ include "rigging.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: rigging
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "rigging.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rigging.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* [registry/]repository@digest when a digest is pinned, else [registry/]repository:tag (tag defaults to appVersion). */}}
{{- define "rigging.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- $name := $image.repository -}}
{{- with $image.registry -}}
{{- $name = printf "%s/%s" (trimSuffix "/" .) $name -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $name $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $name (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}
