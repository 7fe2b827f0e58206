// peer-tree-client.js: the browser client (PeerTreeClient) arrives with the
// browser issue. This placeholder keeps the URL stable and fails loudly.
export class PeerTreeClient {
  constructor() {
    throw new Error('PeerTreeClient is not implemented in this build of peer-tree-relay yet');
  }
}
