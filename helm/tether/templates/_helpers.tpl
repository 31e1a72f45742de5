{{/*
Named templates of the tether chart.

Every template here takes the tether chart's own context: the root context (".") inside this
chart, or ".Subcharts.tether" from a parent chart that vendors this chart as a subchart (see
README.md). They read only .Values, .Release, .Chart and .Capabilities, never .Template.

Public (stable) names, for use from other charts:
  tether.sidecar          the native-sidecar entry for a pod's initContainers (a list item)
  tether.volumes          the pod volumes the sidecar mounts (list items)
  tether.podAnnotations   checksum annotations (may be empty), per tether.configChange
  tether.selectorLabels   labels the chart's Service / PodMonitor select on
*/}}

{{- define "tether.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tether.fullname" -}}
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

{{- define "tether.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tether.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tether.labels" -}}
helm.sh/chart: {{ include "tether.chart" . }}
{{ include "tether.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | default .Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "tether.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tether.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tether.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tether.configMapName" -}}
{{- printf "%s-config" (include "tether.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{/* Name of the Secret holding the API key: the existing one, or the one the chart creates. */}}
{{- define "tether.secretName" -}}
{{- if .Values.tether.apiKey.existingSecret -}}
{{- .Values.tether.apiKey.existingSecret -}}
{{- else -}}
{{- printf "%s-api-key" (include "tether.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart creates the API-key Secret from tether.apiKey.value. */}}
{{- define "tether.createSecret" -}}
{{- if and .Values.tether.apiKey.value (not .Values.tether.apiKey.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* "true" when Tether is given an API key at all (created or existing Secret). */}}
{{- define "tether.hasApiKey" -}}
{{- if or .Values.tether.apiKey.value .Values.tether.apiKey.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the admin token: the existing one, or the one the chart generates. */}}
{{- define "tether.adminTokenSecretName" -}}
{{- if .Values.tether.adminToken.existingSecret -}}
{{- .Values.tether.adminToken.existingSecret -}}
{{- else -}}
{{- printf "%s-admin-token" (include "tether.fullname" . | trunc 51 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{/* "true" when Tether is given an admin token (existing or generated Secret). */}}
{{- define "tether.hasAdminToken" -}}
{{- if or .Values.tether.adminToken.existingSecret .Values.tether.adminToken.generate -}}true{{- end -}}
{{- end -}}

{{/* image reference: repository[:tag][@digest] */}}
{{- define "tether.imageRef" -}}
{{- $img := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- $ref := $img.repository -}}
{{- $tag := default $defaultTag $img.tag -}}
{{- if $tag -}}{{- $ref = printf "%s:%s" $ref (toString $tag) -}}{{- end -}}
{{- if $img.digest -}}{{- $ref = printf "%s@%s" $ref $img.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* Consistency checks that the JSON schema cannot express. */}}
{{- define "tether.validate" -}}
{{- $p := .Values.tether.ports -}}
{{- $ports := list (int $p.public) (int $p.local) (int $p.admin) -}}
{{- if ne (len (uniq $ports)) 3 -}}
{{- fail (printf "tether.ports must be three different ports, got public=%d local=%d admin=%d" (int $p.public) (int $p.local) (int $p.admin)) -}}
{{- end -}}
{{- if has (int .Values.app.port) $ports -}}
{{- fail (printf "app.port %d collides with one of Tether's ports (tether.ports: %v); the app and Tether share the pod's network namespace" (int .Values.app.port) $ports) -}}
{{- end -}}
{{- if and .Values.tether.apiKey.value .Values.tether.apiKey.existingSecret -}}
{{- fail "set either tether.apiKey.value or tether.apiKey.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.tether.adminToken.generate .Values.tether.adminToken.existingSecret -}}
{{- fail "set either tether.adminToken.generate or tether.adminToken.existingSecret, not both" -}}
{{- end -}}
{{- if hasKey (.Values.tether.config | default dict) "listen" -}}
{{- fail "tether.config.listen is derived from tether.ports; set tether.ports instead" -}}
{{- end -}}
{{- end -}}

{{/*
The config file (tether.yaml) as rendered into the ConfigMap: tether.config with the
listeners from tether.ports, app.url from app.port and app.package_name from
tether.packageName filled in (explicit tether.config.app.* wins).
*/}}
{{- define "tether.configData" -}}
{{- $cfg := deepCopy (.Values.tether.config | default dict) -}}
{{- $p := .Values.tether.ports -}}
{{- $_ := set $cfg "listen" (dict
      "public" (printf "0.0.0.0:%d" (int $p.public))
      "local" (printf "127.0.0.1:%d" (int $p.local))
      "admin" (printf "0.0.0.0:%d" (int $p.admin))) -}}
{{- $app := dict -}}
{{- if kindIs "map" (get $cfg "app") -}}{{- $app = get $cfg "app" -}}{{- end -}}
{{- if not (hasKey $app "url") -}}
{{- $_ := set $app "url" (printf "http://127.0.0.1:%d" (int .Values.app.port)) -}}
{{- end -}}
{{- if not (hasKey $app "package_name") -}}
{{- $_ := set $app "package_name" .Values.tether.packageName -}}
{{- end -}}
{{- $_ := set $cfg "app" $app -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pod annotations that roll the pods on change, as chosen in values (may be empty). */}}
{{- define "tether.podAnnotations" -}}
{{- if eq .Values.tether.configChange "restart" }}
checksum/tether-config: {{ include "tether.configData" . | sha256sum }}
{{- end }}
{{- if and .Values.tether.apiKey.rollOnChange (include "tether.createSecret" .) }}
checksum/tether-api-key: {{ printf "%s/%s" (include "tether.secretName" .) .Values.tether.apiKey.value | sha256sum }}
{{- end }}
{{- end -}}

{{/* The native sidecar: one list item for a pod's initContainers. */}}
{{- define "tether.sidecar" -}}
{{- include "tether.validate" . -}}
{{- $t := .Values.tether -}}
- name: {{ $t.containerName }}
  image: {{ include "tether.imageRef" (list $t.image .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ $t.image.pullPolicy }}
  # A native sidecar: starts before the app containers, is restarted on its own,
  # and is stopped only after the app containers have exited.
  restartPolicy: Always
  args: ["run", "--config", "/etc/tether/tether.yaml"]
  ports:
    - name: http
      containerPort: {{ int $t.ports.public }}
      protocol: TCP
    - name: admin
      containerPort: {{ int $t.ports.admin }}
      protocol: TCP
  env:
    - name: TETHER_LOG_FORMAT
      value: {{ $t.logFormat | quote }}
    # Survives a restart of the sidecar in place (the cloud ids in the app's URLs stay valid).
    - name: TETHER_STATE_DIR
      value: /var/lib/tether
    {{- with $t.logLevel }}
    - name: RUST_LOG
      value: {{ . | quote }}
    {{- end }}
    {{- if include "tether.hasApiKey" . }}
    {{- if eq $t.apiKey.mode "file" }}
    - name: TETHER_API_KEY_FILE
      value: {{ printf "%s/%s" (trimSuffix "/" $t.apiKey.mountPath) $t.apiKey.secretKey | quote }}
    {{- else }}
    - name: TETHER_API_KEY
      valueFrom:
        secretKeyRef:
          name: {{ include "tether.secretName" . }}
          key: {{ $t.apiKey.secretKey }}
    {{- end }}
    {{- end }}
    {{- if include "tether.hasAdminToken" . }}
    - name: TETHER_ADMIN_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "tether.adminTokenSecretName" . }}
          key: {{ $t.adminToken.secretKey }}
    {{- end }}
    {{- with $t.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $t.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $t.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $t.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $t.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $t.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $t.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    # A directory mount (not subPath), so ConfigMap updates reach the file for hot reload.
    - name: tether-config
      mountPath: /etc/tether
      readOnly: true
    {{- if and (include "tether.hasApiKey" .) (eq $t.apiKey.mode "file") }}
    - name: tether-api-key
      mountPath: {{ $t.apiKey.mountPath }}
      readOnly: true
    {{- end }}
    - name: tether-tmp
      mountPath: /tmp
    - name: tether-state
      mountPath: /var/lib/tether
    {{- with $t.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Pod volumes the sidecar mounts (list items). */}}
{{- define "tether.volumes" -}}
- name: tether-config
  configMap:
    name: {{ include "tether.configMapName" . }}
{{- if and (include "tether.hasApiKey" .) (eq .Values.tether.apiKey.mode "file") }}
- name: tether-api-key
  secret:
    secretName: {{ include "tether.secretName" . }}
    items:
      - key: {{ .Values.tether.apiKey.secretKey }}
        path: {{ .Values.tether.apiKey.secretKey }}
    # Only the sidecar mounts this volume; 0444 keeps it readable without relying on fsGroup.
    defaultMode: 0444
{{- end }}
- name: tether-tmp
  emptyDir:
    sizeLimit: 64Mi
- name: tether-state
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}
