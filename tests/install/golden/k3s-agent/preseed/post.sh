#!/bin/sh
# ztpd: post-install for node 7 (k3s-7xk4q53), run inside the installed system:
# users, keys and sudo, the install-time wipe of the other disks, and the first-boot callback.
set -eu
id -u ops >/dev/null 2>&1 || useradd -m -s /bin/bash ops
passwd -l ops >/dev/null
home=$(getent passwd ops | cut -d: -f6)
install -d -m 700 "$home/.ssh"
printf '%s' 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk2Zb6o1Xj3QX0bq1Vx3m9XG6Xo1m8k5G3o4xqz1K2P ops@site
' > "$home/.ssh/authorized_keys"
chmod 600 "$home/.ssh/authorized_keys"
chown -R ops: "$home/.ssh"
install -d -m 750 /etc/sudoers.d
printf '%s ALL=(ALL) NOPASSWD:ALL\n' ops > /etc/sudoers.d/ztpd-ops
chmod 440 /etc/sudoers.d/ztpd-ops
wipefs --all --force /dev/disk/by-path/pci-0000:00:17.0-ata-2
wipefs --all --force /dev/disk/by-path/pci-0000:31:00.0-nvme-1
wipefs --all --force /dev/disk/by-path/pci-0000:32:00.0-nvme-1
cat > /usr/local/sbin/ztpd-firstboot <<'ZTPD_EOF'
#!/bin/sh
# Tells ztpd this node booted its installed system, with its SSH host keys; then removes itself.
set -u
url='http://ztpd.test:8080/install/7/TOKEN/firstboot'
set --
for t in rsa ecdsa ed25519; do
  f=/etc/ssh/ssh_host_${t}_key.pub
  if [ -r "$f" ]; then set -- "$@" --data-urlencode "pub_key_${t}@$f"; fi
done
i=0
while [ $i -lt 60 ]; do
  if curl -fsS --max-time 30 "$@" --data-urlencode "hostname=$(hostname)" "$url"; then
    systemctl disable ztpd-firstboot.service
    rm -f /etc/systemd/system/ztpd-firstboot.service /usr/local/sbin/ztpd-firstboot
    exit 0
  fi
  i=$((i + 1))
  sleep 10
done
exit 1
ZTPD_EOF
chmod 755 /usr/local/sbin/ztpd-firstboot
cat > /etc/systemd/system/ztpd-firstboot.service <<'ZTPD_EOF'
[Unit]
Description=Tell ztpd this node booted its installed system
Wants=network-online.target
After=network-online.target ssh.service sshd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ztpd-firstboot

[Install]
WantedBy=multi-user.target
ZTPD_EOF
systemctl enable ztpd-firstboot.service
