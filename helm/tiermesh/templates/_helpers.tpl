{{- define "tiermesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tiermesh.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "router") */}}
{{- define "tiermesh.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tiermesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "tiermesh.bronzeServiceAccount" -}}
{{- .Values.bronze.serviceAccount.name | default (printf "%s-bronze" (include "tiermesh.fullname" .)) -}}
{{- end -}}

{{/* The settings file every tiermesh process reads (tiermesh/config.py's schema). */}}
{{- define "tiermesh.settings" -}}
{{- $name := include "tiermesh.fullname" . -}}
{{- $tiers := dict -}}
{{- if .Values.gold.enabled -}}
{{- $_ := set $tiers "gold" (dict "protocol" "triton" "intent_encoder" "intent_encoder" "endpoints" (list (printf "dns:///%s-gold.%s.svc.cluster.local:8001" $name .Release.Namespace))) -}}
{{- end -}}
{{- if .Values.silver.enabled -}}
{{- $_ := set $tiers "silver" (dict "balancer" .Values.silver.balancer "endpoints" (list (printf "dns:///%s-silver.%s.svc.cluster.local:%d" $name .Release.Namespace (int .Values.silver.port)))) -}}
{{- end -}}
{{- if .Values.bronze.enabled -}}
{{- $_ := set $tiers "bronze" (dict "endpoints" (list (printf "%s-bronze.%s.svc.cluster.local:%d" $name .Release.Namespace (int .Values.bronze.port)))) -}}
{{- end -}}
{{- $settings := dict
  "router" (dict "listen" (printf "0.0.0.0:%d" (int .Values.router.port)) "metrics_port" (int .Values.router.metricsPort) "tiers" $tiers)
  "silver" (dict "listen" (printf "0.0.0.0:%d" (int .Values.silver.port)) "metrics_port" (int .Values.silver.metricsPort) "model" .Values.silver.model)
  "bronze" (dict "listen" (printf "0.0.0.0:%d" (int .Values.bronze.port)) "metrics_port" (int .Values.bronze.metricsPort) "region" .Values.bronze.region "endpoint_name" .Values.bronze.endpointName "bucket" .Values.bronze.bucket "provision" false)
  "tracing" (dict "otlp_endpoint" .Values.monitoring.tracing.otlpEndpoint)
-}}
{{- if .Values.redis.enabled -}}
{{- $_ := set $settings "state" (dict "backend" "redis" "redis_url" (printf "redis://%s-redis:6379/0" $name)) -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- $mesh := dict "cert" "/etc/tiermesh/tls/mesh/tls.crt" "key" "/etc/tiermesh/tls/mesh/tls.key" "ca" "/etc/tiermesh/tls/mesh/ca.crt" "require_client_cert" true -}}
{{- $edge := dict "cert" "/etc/tiermesh/tls/edge/tls.crt" "key" "/etc/tiermesh/tls/edge/tls.key" "ca" "/etc/tiermesh/tls/edge/ca.crt" "require_client_cert" .Values.tls.requireClientCert -}}
{{- $_ := set $settings "security" (dict "mesh_tls" $mesh "edge_tls" $edge) -}}
{{- end -}}
{{- if .Values.auth.enabled -}}
{{- $auth := dict "required" true "api_keys" .Values.auth.apiKeys -}}
{{- if .Values.auth.jwtSecretName -}}
{{- $_ := set $auth "jwt" (dict "issuer" .Values.auth.jwtIssuer "audience" .Values.auth.jwtAudience) -}}
{{- end -}}
{{- $security := get $settings "security" | default dict -}}
{{- $_ := set $security "auth" $auth -}}
{{- $_ := set $settings "security" $security -}}
{{- end -}}
{{- toYaml (mergeOverwrite $settings (deepCopy .Values.config)) -}}
{{- end -}}

{{/* Volumes and mounts every tiermesh container shares: settings, TLS secrets. */}}
{{- define "tiermesh.volumes" -}}
- name: settings
  configMap:
    name: {{ include "tiermesh.fullname" . }}-settings
{{- if .Values.tls.enabled }}
- name: mesh-tls
  secret:
    secretName: {{ .Values.tls.meshSecret }}
- name: edge-tls
  secret:
    secretName: {{ .Values.tls.edgeSecret }}
{{- end }}
{{- end -}}

{{- define "tiermesh.mounts" -}}
- name: settings
  mountPath: /etc/tiermesh/mesh.yaml
  subPath: mesh.yaml
  readOnly: true
{{- if .Values.tls.enabled }}
- name: mesh-tls
  mountPath: /etc/tiermesh/tls/mesh
  readOnly: true
- name: edge-tls
  mountPath: /etc/tiermesh/tls/edge
  readOnly: true
{{- end }}
{{- end -}}

{{/* Readiness of a tiermesh gRPC server: kubelet's gRPC probe speaks no TLS, so with
TLS on the process checks itself (`tiermesh health`, with the mesh certificate). */}}
{{- define "tiermesh.grpcProbe" -}}
{{- if .root.Values.tls.enabled }}
exec:
  command: [tiermesh, health, "127.0.0.1:{{ .port }}", --config, /etc/tiermesh/mesh.yaml]
{{- else }}
grpc:
  port: {{ .port }}
{{- end }}
periodSeconds: 5
failureThreshold: 3
{{- end -}}
