#!/usr/bin/env bash
# Installs the Apache Kafka broker that the Kafka integration tests and the
# Kafka benchmarks run against (tests/support/kafka.rs starts it).
#
# The broker comes from Maven Central: scripts/kafka/pom.xml names
# org.apache.kafka:kafka_2.13 and a log4j2 binding, and `mvn
# dependency:copy-dependencies` copies them with their runtime dependencies
# into ${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}/kafka-<version>/libs.
# Idempotent: a cache whose broker classes load is used as it is. Prints the
# libs directory on its last line; the tests find it there, or wherever
# KAFKA_LIBS points. Needs java (17 or newer) and mvn.
set -euo pipefail
cd "$(dirname "$0")"

POM="$PWD/kafka/pom.xml"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
TOOLS="${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}"
LIBS="$TOOLS/kafka-$VERSION/libs"

for tool in java mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-kafka.sh: $tool is needed (apt-get install openjdk-17-jre-headless maven)" >&2
        exit 1
    fi
done

# The broker's main class and the storage formatter both load.
works() {
    [ -f "$LIBS/kafka_2.13-$VERSION.jar" ] &&
        java -cp "$LIBS/*" kafka.tools.StorageTool version >/dev/null 2>&1
}

if works; then
    echo "install-kafka.sh: Apache Kafka $VERSION already in $LIBS" >&2
else
    echo "install-kafka.sh: copying Apache Kafka $VERSION from Maven Central into $LIBS" >&2
    rm -rf "$LIBS.tmp"
    mkdir -p "$LIBS.tmp"
    mvn -q -B -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >&2
    rm -rf "$LIBS"
    mv "$LIBS.tmp" "$LIBS"
    if ! works; then
        echo "install-kafka.sh: $LIBS was filled but kafka.tools.StorageTool does not run" >&2
        exit 1
    fi
fi
echo "$LIBS"
