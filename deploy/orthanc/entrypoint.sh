#!/bin/sh
# Writes Orthanc's configuration from the environment, then runs Orthanc in the foreground.
#   PACS_AET (PACS), PACS_HTTP_PORT (8042), PACS_DICOM_PORT (4242): Orthanc listens on every
#   interface (the compose file decides what is published)
#   NODE_AET (COVIDCT), NODE_HOST (covidct-node), NODE_DICOM_PORT (11112): the DICOM node,
#   the modality `covidct` every stable CT series is routed to (route-ct.lua)
#   PACS_STABLE_AGE_S (5): seconds without a new instance before a series is stable
#   PACS_USERS: "user:password" for the REST API and DICOMweb (empty: no authentication; the
#   compose file publishes the port on 127.0.0.1 only)
#   PACS_STORAGE (/var/lib/covidct-pacs), PACS_CONFIG (/tmp/orthanc.json): where the data and
#   the written configuration go
set -eu
storage="${PACS_STORAGE:-/var/lib/covidct-pacs}"
config="${PACS_CONFIG:-/tmp/orthanc.json}"
here="$(cd "$(dirname "$0")" && pwd)"
users=""
auth=false
if [ -n "${PACS_USERS:-}" ]; then
    user="${PACS_USERS%%:*}"
    password="${PACS_USERS#*:}"
    users="\"$user\": \"$password\""
    auth=true
fi
cat > "$config" <<JSON
{
  "Name": "${PACS_AET:-PACS}",
  "StorageDirectory": "$storage",
  "IndexDirectory": "$storage",
  "HttpPort": ${PACS_HTTP_PORT:-8042},
  "DicomPort": ${PACS_DICOM_PORT:-4242},
  "DicomAet": "${PACS_AET:-PACS}",
  "RemoteAccessAllowed": true,
  "AuthenticationEnabled": $auth,
  "RegisteredUsers": { $users },
  "StableAge": ${PACS_STABLE_AGE_S:-5},
  "DicomCheckCalledAet": false,
  "DicomModalities": {
    "covidct": ["${NODE_AET:-COVIDCT}", "${NODE_HOST:-covidct-node}", ${NODE_DICOM_PORT:-11112}]
  },
  "LuaScripts": ["$here/route-ct.lua"],
  "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/" }
}
JSON
exec Orthanc "$config"
