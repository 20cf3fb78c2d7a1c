SELECT DISTINCT gateway_id FROM agents WHERE status = 'online' AND transport = 'websocket'
