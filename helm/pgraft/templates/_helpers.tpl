{{- define "pgraft.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The selector labels shared by every object of this release. */}}
{{- define "pgraft.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pgraft.labels" -}}
{{ include "pgraft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The member's DNS name under the headless service, for member $i. */}}
{{- define "pgraft.memberHost" -}}
{{- printf "%s-%d.%s-headless.%s.svc.%s" .full .i .full .ns .domain -}}
{{- end -}}

{{/* name=http://pod.headless.ns.svc.domain:peer,... for every member */}}
{{- define "pgraft.initialCluster" -}}
{{- $full := include "pgraft.fullname" . -}}
{{- $members := list -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $host := include "pgraft.memberHost" (dict "full" $full "i" $i "ns" $.Release.Namespace "domain" $.Values.clusterDomain) -}}
{{- $members = append $members (printf "%s-%d=http://%s:%d" $full $i $host (int $.Values.ports.peer)) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}
