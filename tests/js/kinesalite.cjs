// kinesalite (npm: Kinesis on LevelDB) on one loopback address: its own
// cli.js listens on every interface. Usage, with cli.js's options:
//   node kinesalite.cjs --host 127.0.0.1 --port P --path DIR --createStreamMs 0 ...
// On SIGTERM it closes its LevelDB store (kinesalite's server.close does)
// and exits, so a restart on the same --path finds every record it
// acknowledged. (LevelDB writes each batch to its log before answering,
// so even a SIGKILL loses none.)
'use strict'
const argv = require('minimist')(process.argv.slice(2))
const kinesalite = require('kinesalite')

if (!argv.host || !argv.port) {
  console.error('usage: node kinesalite.cjs --host HOST --port PORT [kinesalite options]')
  process.exit(2)
}
const server = kinesalite(argv)
server.listen(argv.port, argv.host, () => {
  const address = server.address()
  console.log('Listening at http://%s:%s', address.address, address.port)
})
process.on('SIGTERM', () => {
  // Node 19+ also closes idle keep-alive connections here.
  server.close((err) => {
    if (err) console.error(err)
    process.exit(err ? 1 : 0)
  })
})
