# join.sh NAME SHA256: join NAME's parts, check, extract into /tmp/p
set -e
cat /tmp/parts/$1.part.* > /tmp/$1.tar
echo "$2  /tmp/$1.tar" | sha256sum -c
mkdir -p /tmp/p && tar -xf /tmp/$1.tar -C /tmp/p && rm -f /tmp/$1.tar /tmp/parts/$1.part.*
ls -la /tmp/p /tmp/p/* | head -20
