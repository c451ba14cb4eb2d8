package pn532_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"station.dev/agent/drivers/pn532"
	"station.dev/agent/drivers/pn532/pn532sim"
)

// card is a virtual ISO 14443-4 card with a synthetic UID that answers every
// APDU with 90 00.
type card struct{}

func (card) UID() []byte                          { return []byte{0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66} }
func (card) SensRes() [2]byte                     { return [2]byte{0x00, 0x44} }
func (card) SelRes() byte                         { return 0x20 }
func (card) ATS() []byte                          { return []byte{0x78, 0x80, 0x70, 0x02} }
func (card) Transmit(apdu []byte) ([]byte, error) { return []byte{0x90, 0x00}, nil }

func ExampleNewI2C() {
	// On a station the hardware assembly (drivers/hw) opens the bus and
	// the IRQ line; here they come from the emulated chip.
	chip := pn532sim.New(nil)
	opts := pn532.DefaultOpts
	opts.IRQ = chip.IRQ()
	dev, err := pn532.NewI2C(chip.I2C(), 0x24, &opts)
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Halt()
	fmt.Println(dev.Firmware())

	ctx := context.Background()
	gone := chip.Present(card{})
	tg, err := dev.InListPassiveTarget(ctx)
	if err != nil || tg == nil {
		log.Fatal("no card: ", err)
	}
	fmt.Println(tg) // never shows the UID
	// SELECT 2PAY.SYS.DDF01
	r, err := dev.InDataExchange(ctx, tg.Tg, []byte{0x00, 0xA4, 0x04, 0x00, 0x0E,
		'2', 'P', 'A', 'Y', '.', 'S', 'Y', 'S', '.', 'D', 'D', 'F', '0', '1', 0x00})
	switch {
	case errors.Is(err, pn532.ErrCardRemoved):
		fmt.Println("card removed too early")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Printf("% X\n", r)
	}
	if err := dev.InRelease(ctx, tg.Tg); err != nil {
		log.Fatal(err)
	}
	<-gone
	fmt.Println(dev.Health().State)
	// Output:
	// PN532 v1.6
	// Tg 1 SENS_RES 0044 SEL_RES 20 UID(7 bytes) ATS(4 bytes)
	// 90 00
	// ok
}
