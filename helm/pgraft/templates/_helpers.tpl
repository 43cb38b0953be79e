{{- define "pgraft.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* name=http://pod.headless.ns.svc.domain:peer,... for every member */}}
{{- define "pgraft.initialCluster" -}}
{{- $full := include "pgraft.fullname" . -}}
{{- $members := list -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $members = append $members (printf "%s-%d=http://%s-%d.%s-headless.%s.svc.%s:%d" $full $i $full $i $full $.Release.Namespace $.Values.clusterDomain (int $.Values.ports.peer)) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}
