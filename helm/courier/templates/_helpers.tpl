{{/* Names ------------------------------------------------------------------ */}}

{{- define "courier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; components append -api, -worker, -migrate. */}}
{{- define "courier.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "courier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------- */}}

{{- define "courier.labels" -}}
helm.sh/chart: {{ include "courier.chart" . }}
app.kubernetes.io/name: {{ include "courier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: courier
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "api") */}}
{{- define "courier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "courier.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "courier.componentLabels" -}}
{{ include "courier.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image, Secret, ConfigMap ------------------------------------------------ */}}

{{- define "courier.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret the pods read: the operator's, or the chart's own. */}}
{{- define "courier.secretName" -}}
{{- default (include "courier.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "courier.configMapName" -}}
{{- include "courier.fullname" . -}}
{{- end -}}

{{/* The chart's Secret data: variable name -> value, empty values left out. */}}
{{- define "courier.secretEnv" -}}
{{- $s := .Values.secrets -}}
{{- $env := dict
    "COURIER__DATABASE__URL" $s.databaseUrl
    "COURIER__AMQP__URL" $s.amqpUrl
    "COURIER__REDIS__URL" $s.redisUrl
    "COURIER__KEYS__ENCRYPTION_KEY" $s.encryptionKey
    "COURIER__API__BOOTSTRAP_ADMIN_KEY" $s.bootstrapAdminKey
    "COURIER__PAYMENTS__STRIPE_WEBHOOK_SECRET" $s.stripeWebhookSecret
    "COURIER__PAYMENTS__STRIPE_SECRET_KEY" $s.stripeSecretKey
    "COURIER__PAYMENTS__GENERIC_WEBHOOK_SECRET" $s.genericWebhookSecret
    "COURIER__DISCORD__BOT_TOKEN" $s.discordBotToken
    "COURIER__DOWNLOADS__SIGNING_KEY" $s.downloadSigningKey -}}
{{- range $k, $v := $s.extra }}{{ $_ := set $env $k $v }}{{ end -}}
{{- range $k, $v := $env }}
{{- $str := include "courier.str" $v }}
{{- if ne $str "" }}
{{ $k }}: {{ $str | b64enc | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A value as an environment variable's text: whole numbers without an
exponent (YAML numbers reach templates as float64), null as "". */}}
{{- define "courier.str" -}}
{{- if kindIs "invalid" . -}}
{{- else if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Where the CA bundle is mounted, or "" when none is configured. */}}
{{- define "courier.caFile" -}}
{{- $ca := .Values.tls.caBundle -}}
{{- if or $ca.secretName $ca.configMapName -}}
{{- printf "%s/%s" (trimSuffix "/" $ca.mountPath) $ca.key -}}
{{- end -}}
{{- end -}}

{{/* Non-secret settings as YAML map lines: name: "value". */}}
{{- define "courier.configEnv" -}}
{{- $c := .Values.config -}}
{{- $env := dict
    "COURIER__API__BIND" "0.0.0.0:8080"
    "COURIER__WORKER__HTTP_BIND" (printf "0.0.0.0:%d" (int .Values.worker.metricsService.port))
    "COURIER__DATABASE__MIGRATE_ON_START" (ternary "false" "true" .Values.migration.enabled)
    "COURIER__DATABASE__MAX_CONNECTIONS" $c.database.maxConnections
    "COURIER__AMQP__PREFIX" $c.amqp.prefix
    "COURIER__LOG__FORMAT" $c.log.format
    "COURIER__LOG__FILTER" $c.log.filter
    "COURIER__WORKER__CONCURRENCY" .Values.worker.concurrency
    "COURIER__WORKER__SHUTDOWN_GRACE_SECONDS" .Values.worker.shutdownGraceSeconds
    "COURIER__TLS__CA_FILE" (include "courier.caFile" .) -}}
{{- range $k, $v := $c.extraEnv }}{{ $_ := set $env $k $v }}{{ end -}}
{{- range $k, $v := $env }}
{{- $str := include "courier.str" $v }}
{{- if ne $str "" }}
{{ $k }}: {{ $str | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod pieces ------------------------------------------------------------- */}}

{{- define "courier.caVolume" -}}
{{- $ca := .Values.tls.caBundle -}}
{{- if $ca.secretName }}
- name: ca-bundle
  secret:
    secretName: {{ $ca.secretName }}
    items:
      - key: {{ $ca.key }}
        path: {{ $ca.key }}
{{- else if $ca.configMapName }}
- name: ca-bundle
  configMap:
    name: {{ $ca.configMapName }}
    items:
      - key: {{ $ca.key }}
        path: {{ $ca.key }}
{{- end }}
{{- end -}}

{{- define "courier.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmp.sizeLimit }}
{{- include "courier.caVolume" . }}
{{- end -}}

{{- define "courier.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "courier.caFile" . }}
- name: ca-bundle
  mountPath: {{ .Values.tls.caBundle.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every pod (indent by the caller). */}}
{{- define "courier.podCommon" -}}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Scheduling of a component: pass its values block. */}}
{{- define "courier.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* envFrom of the long-running pods: settings, then credentials. */}}
{{- define "courier.envFrom" -}}
- configMapRef:
    name: {{ include "courier.configMapName" . }}
- secretRef:
    name: {{ include "courier.secretName" . }}
{{- end -}}

{{/* Restarts pods when the settings or the chart's own credentials change. */}}
{{- define "courier.checksums" -}}
checksum/config: {{ include "courier.configEnv" . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include "courier.secretEnv" . | sha256sum }}
{{- end }}
{{- end -}}

{{/* Whether KEDA scales the worker (then no HPA is rendered for it). */}}
{{- define "courier.workerKeda" -}}
{{- if .Values.autoscaling.keda.enabled }}true{{ end -}}
{{- end -}}

{{- define "courier.workerHpa" -}}
{{- if and .Values.autoscaling.hpa.enabled (not .Values.autoscaling.keda.enabled) }}true{{ end -}}
{{- end -}}

{{- define "courier.validate" -}}
{{- $ca := .Values.tls.caBundle -}}
{{- if and $ca.secretName $ca.configMapName -}}
{{- fail "tls.caBundle: set secretName or configMapName, not both" -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (or (not .Values.secrets.databaseUrl) (not .Values.secrets.amqpUrl) (not .Values.secrets.redisUrl)) -}}
{{- fail "secrets: set databaseUrl, amqpUrl and redisUrl, or name an existingSecret holding COURIER__DATABASE__URL, COURIER__AMQP__URL and COURIER__REDIS__URL" -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9._-]*$" (toString .Values.config.amqp.prefix)) -}}
{{- fail "config.amqp.prefix: use letters, digits, '.', '-' or '_'" -}}
{{- end -}}
{{- end -}}
