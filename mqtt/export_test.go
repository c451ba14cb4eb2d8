package mqtt
