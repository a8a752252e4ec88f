# The lab initiator's setup, shared by the lab guests (the host puts it after their
# header): the VM's address, open-iscsi timeouts for fast failover (the README's), and
# dm-multipath with the README's device section (ALUA priorities, failback immediate).
ip addr add 192.168.0.33/24 dev eth0
cat > /etc/iscsi/iscsid.conf <<CONF
node.session.timeo.replacement_timeout = 4
node.conn[0].timeo.noop_out_interval = 1
node.conn[0].timeo.noop_out_timeout = 2
node.conn[0].timeo.login_timeout = 5
CONF
cat > /etc/multipath.conf <<CONF
defaults {
    polling_interval 1
    max_polling_interval 1
    checker_timeout 2
    find_multipaths no
    user_friendly_names yes
}
devices {
    device {
        vendor "RBDGW"
        product ".*"
        path_grouping_policy group_by_prio
        prio sysfs
        detect_prio no
        hardware_handler "1 alua"
        path_checker tur
        failback immediate
        fast_io_fail_tmo 4
        no_path_retry 60
    }
}
CONF
iscsid -f & sleep 1
