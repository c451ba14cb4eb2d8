// Package pn532 drives the NXP PN532 NFC reader chip over I²C, SPI or UART
// (HSU), in the style of periph.io/x/devices: the bus is injected, never
// closed, and the constructor talks to the chip at once so that a missing
// reader fails with a clear error.
//
// The driver covers what a contactless card station needs: detecting one
// ISO 14443 type A card at 106 kbps (InListPassiveTarget), exchanging APDUs
// with it (InDataExchange, with chaining both ways and extended frames),
// releasing it, powering the chip down, and keeping the chip working
// unattended (Recover, Health).
//
// # Host link
//
// Frames follow the PN532 user manual (UM0701-02 §6.2); the codec in frame.go
// handles normal and extended information frames, ACK, NACK and the error
// frame, and checks both checksums. Each command is acknowledged by the chip
// and answered later. The driver waits for each frame either on the IRQ line
// (falling edge; preferred) or by polling the status every PollInterval.
//
//   - I²C (address 0x24): every read starts with a status byte (bit 0:
//     ready). Without IRQ, a short read (the ACK, the answers of the
//     configuration commands) is tried at once, since its status byte says
//     whether the frame was ready; longer reads wait for a one-byte status
//     poll first. Run the bus at 100 kHz or less.
//   - SPI: mode 0 at 1 MHz; the first byte of each transaction is 0x01
//     (write), 0x02 (status read) or 0x03 (data read). The chip sends the
//     least significant bit first, which the Raspberry Pi's SPI driver
//     refuses to do, so the driver reverses the bits of every byte itself.
//     A data read of all zeros means the chip was not ready after all.
//   - UART (HSU, 115200 8N1): a byte stream; the chip is woken with 0x55
//     0x55 and zeros. See "Opening a serial port" below.
//
// On I²C and SPI each answer is read in one transaction, sized by the last
// answer to the same kind of command (the command code and its first
// parameters: for InDataExchange, the APDU's header). A frame longer than the
// read is asked for again with a NACK and read whole, which happens the first
// time only. InListPassiveTarget is read for a target (32 bytes, or the size
// of the last target), so that a card coming is not read twice; with one poll
// per 100 ms an empty field costs 4.9% of a 100 kHz I²C bus with IRQ, up to
// 6.9% with status polls (a poll every 5 ms while the chip searches), and
// under 1% of a 1 MHz SPI bus.
//
// # Recovery
//
// A transient fault does not fail the command it hits. The driver resends what
// the chip cannot have acted on, asks with a NACK for a frame the chip sent
// but the host did not get whole, and finds frames behind noise:
//
//	fault                           what the driver does                           added latency
//	lost ACK (answer in its place)  take the answer; NACK if the read cut it       I²C 0.7 ms, SPI 0.1 ms, UART 0
//	garbled ACK                     the chip has the command: wait for the answer  0
//	bus error, address NACKed       try again 1 ms, then 5 ms later                1–2.5 ms
//	read failed after hand-over     NACK, read again (IRQ or status poll)          I²C 3–5 ms, SPI 1.2 ms
//	corrupted frame (checksum)      NACK, read again                               I²C 2 ms, SPI 0.2 ms
//	not-ready read (IRQ, status)    wait PollInterval, read again; no NACK         5 ms per read
//	chip asleep                     I²C: try again until it acknowledges           I²C 8 ms
//	                                SPI, UART: as a lost command                   SPI 105 ms, UART 113 ms
//	command lost (no ACK)           after 100 ms resynchronise, send again         105–112 ms
//	noise before the start code     skip it; read again if it cut the frame        I²C 3 ms, SPI 0.2, UART 1 ms
//	extra preamble byte             none: the postamble may be missing             0
//
// Latencies are bus time at 100 kHz (I²C), 1 MHz (SPI) or 115200 baud plus
// the waits, as measured by the fault tests (fault_test.go). A command is sent
// three times at most; a frame is asked for again three times at most.
//
// When a command fails anyway (timeout, repeated bad frames, persistent bus
// errors) the driver resynchronises: an ACK frame aborts whatever the chip is
// doing and pending frames are discarded. After three consecutive failures it
// runs Recover: reset pulse on RSTPDN when Opts.Reset is wired, then
// re-initialisation (SAMConfiguration, firmware check, RFConfiguration).
// Health reports "ok", "degraded" (anomalies in the last minute, recovered
// ones included) or "down" (re-initialisation failing: later commands try
// again at most once a second and fail with ErrDown in between), with
// counters. Card-side failures (a card pulled away mid-exchange) are
// *StatusError values, not chip failures.
//
// Errors never contain card data or UIDs, and the driver logs none.
//
// # Opening a serial port
//
// The caller opens and configures the port; without cgo, golang.org/x/sys/unix
// does it (the station's hardware assembly, station.dev/agent/drivers/hw,
// shows the whole of it): open the device with
// O_RDWR|O_NOCTTY|O_NONBLOCK, set raw mode, 8N1, no flow control and 115200
// baud with IoctlSetTermios (VMIN 0, VTIME 1), then wrap the descriptor with
// os.NewFile. A non-blocking descriptor makes the *os.File pollable, so its
// SetReadDeadline works and the driver bounds each read; with a port that
// cannot, VTIME bounds them. On a Raspberry Pi free the UART from the login
// console first (raspi-config, or remove console=serial0 from cmdline.txt).
package pn532
