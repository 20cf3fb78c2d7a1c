UPDATE partition_leases SET owner = '', expires_at = 0 WHERE owner = $1
